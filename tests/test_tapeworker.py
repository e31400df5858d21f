"""The worker's lean RQ path: what it leaves in Redis is what RQ's own worker leaves, in fewer round trips."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from redis import Redis
from redis.connection import Connection
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus

from tests.conftest import RedisServer
from tests.test_engine import EXAMPLE_1
from worker import jobs
from worker.protocol import BATCH_FUNCTION, JOB_FUNCTION, OrjsonSerializer, payload_key, queue_name
from worker.tapeworker import TapeJob, TapeWorker

pytest.importorskip("tensorflow")  # the jobs run the in-process engine


class CountingConnection(Connection):
    """A Redis connection that counts what it sends: one send is one round trip (a pipeline is one)."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)


@pytest.fixture
def counted(redis: Redis, redis_server: RedisServer) -> Iterator[Redis]:
    jobs.install_runner(None)
    connection = Redis.from_url(redis_server.url, connection_class=CountingConnection)
    yield connection
    connection.close()


def enqueue(redis: Redis, job_id: str, doc: Any, function: str = JOB_FUNCTION) -> Job:
    """Queue a job as the API does: the request under its payload key, the key as the only argument."""
    queue = Queue(queue_name("cpu"), connection=redis, serializer=OrjsonSerializer)
    redis.set(payload_key(job_id), orjson.dumps(doc))
    return queue.enqueue_call(function, args=(payload_key(job_id),), job_id=job_id, result_ttl=600)


def make_worker(kind: type[SimpleWorker], connection: Redis, name: str) -> SimpleWorker:
    queue = Queue(queue_name("cpu"), connection=connection, serializer=OrjsonSerializer)
    if kind is TapeWorker:
        return TapeWorker([queue], connection=connection, serializer=OrjsonSerializer, job_class=TapeJob, name=name)
    return SimpleWorker([queue], connection=connection, serializer=OrjsonSerializer, name=name)


def text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def snapshot(redis: Redis, job_id: str, worker_name: str) -> dict[str, Any]:
    """What RQ leaves of a finished job, without its timestamps and generated ids."""
    queue = Queue(queue_name("cpu"), connection=redis, serializer=OrjsonSerializer)
    job = Job.fetch(job_id, connection=redis, serializer=OrjsonSerializer)
    result = job.latest_result()
    worker = {text(k): text(v) for k, v in redis.hgetall(f"rq:worker:{worker_name}").items()}
    return {
        "job fields": sorted(text(k) for k in redis.hkeys(job.key)),
        "status": job.get_status(),
        "worker_name": job.worker_name,
        "result": (result.type, result.return_value) if result else None,
        "job ttl set": redis.ttl(job.key) > 0,
        "finished registry": job_id in queue.finished_job_registry,
        "started registry": queue.started_job_registry.get_job_ids(),
        "executions left": sorted(text(k).split(":")[1] for k in redis.keys(f"rq:execution*:{job_id}*")),
        "payload left": redis.exists(payload_key(job_id)),
        "worker state": worker.get("state"),
        "worker current job": worker.get("current_job"),
        "worker successful_job_count": worker.get("successful_job_count"),
        "worker has total_working_time": "total_working_time" in worker,
    }


@pytest.mark.parametrize(
    ("function", "doc"),
    [(JOB_FUNCTION, EXAMPLE_1), (BATCH_FUNCTION, [{"graph": EXAMPLE_1}, {"problem": {"status": 422}}])],
)
def test_the_lean_worker_leaves_in_redis_what_rqs_own_worker_leaves(counted: Redis, function: str, doc: Any) -> None:
    seen = {}
    for kind in (SimpleWorker, TapeWorker):
        job_id = f"job-{kind.__name__}"
        enqueue(counted, job_id, doc, function)
        worker = make_worker(kind, counted, f"w-{kind.__name__}")
        worker.work(burst=True, logging_level="WARNING")  # its hash outlives it by a minute
        seen[kind.__name__] = snapshot(counted, job_id, worker.name)
    lean, stock = seen["TapeWorker"], seen["SimpleWorker"]
    assert lean["status"] == JobStatus.FINISHED and lean["result"] is not None
    assert lean == {**stock, "worker_name": "w-TapeWorker"}


def test_a_failing_job_takes_rqs_failure_path_with_its_problem(counted: Redis) -> None:
    enqueue(counted, "bad", {**EXAMPLE_1, "sources": ["nope"]})
    make_worker(TapeWorker, counted, "w-bad").work(burst=True, logging_level="WARNING")
    job = Job.fetch("bad", connection=counted, serializer=OrjsonSerializer)
    assert job.get_status() == JobStatus.FAILED
    assert "/sources/0" in orjson.dumps(job.meta).decode()
    queue = Queue(queue_name("cpu"), connection=counted, serializer=OrjsonSerializer)
    assert "bad" in queue.failed_job_registry and queue.started_job_registry.get_job_ids() == []
    assert not counted.exists(payload_key("bad"))


def round_trips_per_job(connection: Redis, kind: type[SimpleWorker], n: int) -> float:
    """Round trips of a burst worker with n jobs, minus those with one, per extra job."""
    sends = []
    for count in (1, n):
        for k in range(count):
            enqueue(connection, f"{kind.__name__}-{count}-{k}", EXAMPLE_1)
        worker = make_worker(kind, connection, f"{kind.__name__}-{count}")
        CountingConnection.sends = 0
        worker.work(burst=True, logging_level="WARNING")
        sends.append(CountingConnection.sends)
    return (sends[1] - sends[0]) / (n - 1)


def test_a_job_costs_the_lean_worker_a_third_of_rqs_round_trips(counted: Redis) -> None:
    # Dequeue, fetch, start (with the request), outcome: at most 4 (3.2 measured: a burst
    # worker pops without blocking). RQ's own SimpleWorker: 19 on RQ 2.12.
    # A heartbeat or suspension check falls due once a second; a slow host may see one more.
    lean = round_trips_per_job(counted, TapeWorker, 6)
    stock = round_trips_per_job(counted, SimpleWorker, 6)
    print(f"MEASURED round trips per job: lean {lean:.1f}, RQ's SimpleWorker {stock:.1f}")
    assert lean <= 5
    assert stock >= 2.5 * lean


def test_a_job_of_ours_is_fetched_with_its_request_which_runs_once(counted: Redis) -> None:
    enqueue(counted, "mine", EXAMPLE_1)
    job = TapeJob.fetch("mine", connection=counted, serializer=OrjsonSerializer)
    assert job.fetched_payload == orjson.dumps(EXAMPLE_1)
    make_worker(TapeWorker, counted, "w-mine").work(burst=True, logging_level="WARNING")
    assert Job.fetch("mine", connection=counted, serializer=OrjsonSerializer).get_status() == JobStatus.FINISHED
    assert not counted.exists(payload_key("mine"))  # deleted with the job's start


def test_a_sent_transaction_reads_its_replies_later_and_raises_the_first_error(counted: Redis) -> None:
    from redis.exceptions import ResponseError

    from worker.tapeworker import SentTransaction

    sent = SentTransaction(counted, [("SET", "k", "v"), ("INCR", "n")])
    assert sent.result() == [b"OK", 1]  # EXEC's replies, raw as Redis sends them
    assert counted.get("k") == b"v" and counted.get("n") == b"1"
    failing = SentTransaction(counted, [("INCR", "k"), ("SET", "after", "1")])
    with pytest.raises(ResponseError):
        failing.result()
    assert counted.get("after") == b"1"  # Redis ran the rest of the transaction, as MULTI does
    assert counted.ping()  # the connection went back to the pool clean
