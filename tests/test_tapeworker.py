"""The worker's lean RQ path: what it leaves in Redis is what RQ's own worker leaves, in fewer round trips."""

from __future__ import annotations

from collections.abc import Iterator
from multiprocessing.connection import Connection as MPConnection
from typing import Any

import orjson
import pytest
from redis import Redis
from redis.connection import Connection
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus

from tapecore.limits import DEFAULT_LIMITS, Limits
from tapecore.protocol import BATCH_FUNCTION, JOB_FUNCTION, OrjsonSerializer, payload_key, queue_name
from tests.conftest import RedisServer
from tests.examples import EXAMPLE_1
from worker import jobs
from worker.runner import InProcessRunner, TensorFlowProcess
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
    jobs.install_runner(InProcessRunner(DEFAULT_LIMITS))
    connection = Redis.from_url(redis_server.url, connection_class=CountingConnection)
    yield connection
    connection.close()
    jobs.install_runner(None)


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


def test_a_job_costs_the_lean_worker_about_a_quarter_of_rqs_round_trips(counted: Redis) -> None:
    # docs/performance.md states the count: 4 a job (dequeue, fetch with the request, start,
    # outcome), 19 for RQ 2.12's SimpleWorker. A heartbeat or suspension check falls due once a second.
    lean = round_trips_per_job(counted, TapeWorker, 21)
    stock = round_trips_per_job(counted, SimpleWorker, 21)
    print(f"MEASURED round trips per job: lean {lean:.1f}, RQ's SimpleWorker {stock:.1f}")
    assert 3 <= lean <= 5
    assert stock >= 3 * lean


def test_a_jobs_request_is_taken_when_it_runs(counted: Redis) -> None:
    enqueue(counted, "mine", EXAMPLE_1)
    make_worker(TapeWorker, counted, "w-mine").work(burst=True, logging_level="WARNING")
    assert Job.fetch("mine", connection=counted, serializer=OrjsonSerializer).get_status() == JobStatus.FINISHED
    assert not counted.exists(payload_key("mine"))  # read and deleted by the job: it runs once


def test_a_sent_transaction_reads_its_replies_later_and_raises_the_first_error(counted: Redis) -> None:
    from redis.exceptions import ResponseError

    from worker.transaction import SentTransaction

    sent = SentTransaction(counted, [("SET", "k", "v"), ("INCR", "n")])
    assert sent.result() == [b"OK", 1]  # EXEC's replies, raw as Redis sends them
    assert counted.get("k") == b"v" and counted.get("n") == b"1"
    failing = SentTransaction(counted, [("INCR", "k"), ("SET", "after", "1")])
    with pytest.raises(ResponseError):
        failing.result()
    assert counted.get("after") == b"1"  # Redis ran the rest of the transaction, as MULTI does
    assert counted.ping()  # the connection went back to the pool clean


# -- a job in a real TensorFlow process ---------------------------------------------------------


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

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.tasks = 0
        send = MPConnection.send

        def counting(conn: MPConnection, obj: Any) -> None:
            if obj is not None:
                self.tasks += 1
            send(conn, obj)

        monkeypatch.setattr(MPConnection, "send", counting)


def test_a_job_whose_start_fails_fails_and_the_next_job_runs(
    redis: Redis, tf_process: TensorFlowProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    class StartFailsOnce(TapeWorker):
        failed = False

        def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
            if not self.failed:
                self.failed = True
                raise RuntimeError("the job's start could not be recorded")
            super().prepare_job_execution(job, remove_from_intermediate_queue)

    sent = SendCounter(monkeypatch)
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
    assert sent.tasks == 1  # only the job that started ran in TensorFlow


# -- the fork is declared: its RQ series is checked, its runner installed, RQ's dependents kept ---


@pytest.mark.parametrize("version", ["2.11.3", "2.13.0", "3.0.0", "1.16.2"])
def test_the_worker_refuses_an_rq_outside_the_series_it_forks(version: str) -> None:
    from worker.tapeworker import RQ_SERIES, check_rq_version

    check_rq_version("2.12.0")
    check_rq_version()  # the installed RQ, which constraints.txt pins
    with pytest.raises(RuntimeError, match=rf"RQ {version} .* fork of RQ {RQ_SERIES}\.x"):
        check_rq_version(version)


def test_python_m_worker_exits_at_start_naming_the_series_on_another_rq() -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = (
        "import rq, sys; rq.__version__ = '2.13.0'\n"
        "from worker.cli import main\n"
        "sys.exit(main(['--pool', 'cpu', '--redis-url', 'redis://127.0.0.1:9']))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60)
    assert done.returncode == 2, done.stderr.decode()[-2000:]
    assert b"RQ 2.13.0 is installed, but worker/tapeworker.py is a fork of RQ 2.12.x" in done.stderr


def test_without_an_installed_runner_a_job_fails_loudly(counted: Redis) -> None:
    jobs.install_runner(None)
    enqueue(counted, "no-runner", EXAMPLE_1)
    make_worker(TapeWorker, counted, "w-no-runner").work(burst=True, logging_level="WARNING")
    job = Job.fetch("no-runner", connection=counted, serializer=OrjsonSerializer)
    assert job.get_status() == JobStatus.FAILED
    result = job.latest_result()
    assert result is not None and "no runner installed" in (result.exc_string or "")


def test_a_job_with_dependents_has_them_enqueued_as_rqs_worker_does(counted: Redis) -> None:
    queue = Queue(queue_name("cpu"), connection=counted, serializer=OrjsonSerializer)
    parent = enqueue(counted, "parent", EXAMPLE_1)
    counted.set(payload_key("child"), orjson.dumps(EXAMPLE_1))
    child = queue.enqueue_call(JOB_FUNCTION, args=(payload_key("child"),), job_id="child", depends_on=parent)
    assert child.get_status() == JobStatus.DEFERRED
    make_worker(TapeWorker, counted, "w-parent").work(burst=True, logging_level="WARNING")
    assert parent.get_status() == JobStatus.FINISHED
    # The child was enqueued when its parent finished, and the burst worker ran it too.
    assert child.get_status() == JobStatus.FINISHED
    assert orjson.loads(orjson.dumps(child.return_value()))["target"]["value"] == 9.0
    assert queue.deferred_job_registry.get_job_ids() == []


def test_the_api_reads_a_jobs_outcome_through_rqs_result_api_unparsed(counted: Redis) -> None:
    from rq.results import Result

    from service.jobqueue import JobQueue
    from service.jobview import finished_document, job_document

    api = JobQueue(counted, result_ttl=600, failure_ttl=600, queued_ttl=60, job_timeout=30, worker_check_s=1)
    ok = api.enqueue(JOB_FUNCTION, orjson.dumps(EXAMPLE_1), device="cpu", meta={})
    bad = api.enqueue(JOB_FUNCTION, orjson.dumps({**EXAMPLE_1, "sources": ["nope"]}), device="cpu", meta={})
    assert api.wait(ok.id, 0.05) is None  # no outcome yet: the wait ran out
    make_worker(TapeWorker, counted, "w-api").work(burst=True, logging_level="WARNING")

    outcome = api.wait(ok.id, 1)
    assert isinstance(outcome, Result) and outcome.type == Result.Type.SUCCESSFUL
    assert isinstance(outcome.return_value, orjson.Fragment)  # the worker's JSON, spliced as it is
    doc = finished_document(ok, outcome)
    assert doc is not None and orjson.loads(orjson.dumps(doc["result"]))["gradients"]["x"]["value"] == 6.0
    assert set(doc) == {"id", "status", "created_at", "started_at", "ended_at", "result"}
    done = api.fetch(ok.id)
    assert done is not None and orjson.dumps(job_document(done, api)["result"]) == orjson.dumps(doc["result"])

    failed = api.wait(bad.id, 1)
    assert failed is not None and failed.type == Result.Type.FAILED and finished_document(bad, failed) is None
    refused = api.fetch(bad.id)
    assert refused is not None
    shown = job_document(refused, api)
    assert shown["status"] == "failed" and shown["error"]["errors"][0]["path"] == "/sources/0"
