"""The worker's lean RQ path: what it leaves in Redis is what RQ's own worker leaves, in fewer round trips."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection as MPConnection
from typing import Any

import orjson
import pytest
from redis import Redis
from redis.connection import Connection
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus

from tapecore.limits import Limits
from tapecore.protocol import BATCH_FUNCTION, JOB_FUNCTION, OrjsonSerializer, payload_key, queue_name
from tests.conftest import RedisServer
from tests.examples import EXAMPLE_1
from worker import jobs
from worker.runner import TensorFlowProcess
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


# -- a job's task started early, while its start is written ---------------------------------------


@pytest.fixture(scope="module")
def tf_process() -> Iterator[TensorFlowProcess]:
    """A real TensorFlow process, as the worker runs jobs in (started once: it takes seconds)."""
    runner = TensorFlowProcess(Limits(time_limit_s=30))
    runner.start()
    yield runner
    runner.close()


def square(x: float) -> bytes:
    """A request whose answer says which request it was: x * x."""
    return orjson.dumps({"tensors": {"x": x}, "expression": "x * x", "sources": ["x"]})


def target(out: bytes) -> float:
    return float(orjson.loads(out)["target"]["value"])


class SendCounter:
    """Counts the tasks sent to the TensorFlow process (wraps the real pipe; the process is real)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, on_task: Callable[[bytes], None] = lambda payload: None):
        self.tasks = 0
        send = MPConnection.send

        def counting(conn: MPConnection, obj: Any) -> None:
            if obj is not None:
                self.tasks += 1
                on_task(obj[1])
            send(conn, obj)

        monkeypatch.setattr(MPConnection, "send", counting)


def test_a_task_started_early_is_answered_to_its_own_run_and_never_to_another(
    tf_process: TensorFlowProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = SendCounter(monkeypatch)
    two, three = square(2.0), square(3.0)
    tf_process.start_early("graph", two, False)
    assert target(tf_process.run("graph", two, False)[0]) == 4.0
    assert sent.tasks == 1  # the run read the early task's answer; it did not send it again
    # A run of another request (or of an equal copy) waits out the early answer and drops it.
    tf_process.start_early("graph", two, False)
    assert target(tf_process.run("graph", three, False)[0]) == 9.0
    tf_process.start_early("graph", two, False)
    assert target(tf_process.run("graph", bytes(bytearray(two)), False)[0]) == 4.0
    assert sent.tasks == 5
    # A task no run collects is settled: waited out, or killed (the process is replaced).
    restarts = tf_process.restarts
    tf_process.start_early("graph", two, False)
    tf_process.settle_early()
    assert tf_process.restarts == restarts
    assert target(tf_process.run("graph", three, False)[0]) == 9.0
    tf_process.start_early("graph", two, False)
    tf_process.settle_early(kill=True)
    assert tf_process.restarts == restarts + 1
    assert target(tf_process.run("graph", three, False)[0]) == 9.0


def test_a_job_whose_start_fails_leaves_no_answer_for_the_next_job(
    redis: Redis, tf_process: TensorFlowProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    class StartFailsOnce(TapeWorker):
        failed = False

        def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
            if not self.failed:
                self.failed = True
                raise RuntimeError("the job's start could not be recorded")
            super().prepare_job_execution(job, remove_from_intermediate_queue)

    requests = {square(2.0): "starts-badly", square(3.0): "next"}
    status_when_sent = {}

    def note_status(payload: bytes) -> None:
        job_id = requests[payload]
        status_when_sent[job_id] = Job.fetch(job_id, connection=redis, serializer=OrjsonSerializer).get_status()

    sent = SendCounter(monkeypatch, note_status)
    for job_id, x in (("starts-badly", 2.0), ("next", 3.0)):
        redis.set(payload_key(job_id), square(x))
        queue = Queue(queue_name("cpu"), connection=redis, serializer=OrjsonSerializer)
        queue.enqueue_call(JOB_FUNCTION, args=(payload_key(job_id),), job_id=job_id, result_ttl=600)
    jobs.install_runner(tf_process)
    worker = StartFailsOnce(
        [queue], connection=redis, serializer=OrjsonSerializer, job_class=TapeJob, runner=tf_process
    )
    try:
        worker.work(burst=True, logging_level="WARNING")
    finally:
        jobs.install_runner(None)
        tf_process.on_wait = None
    assert Job.fetch("starts-badly", connection=redis, serializer=OrjsonSerializer).get_status() == JobStatus.FAILED
    done = Job.fetch("next", connection=redis, serializer=OrjsonSerializer)
    assert done.get_status() == JobStatus.FINISHED
    assert target(orjson.dumps(done.return_value())) == 9.0
    assert sent.tasks == 2  # each job's task went to TensorFlow once, before its start was written
    assert status_when_sent == {"starts-badly": JobStatus.QUEUED, "next": JobStatus.QUEUED}
