"""Faults, with the real processes: a TensorFlow process or a whole worker killed mid-job, a graph
past its time limit, Redis restarted under traffic, a worker told to stop mid-job.

Each test that breaks something has its own redis-server, API and workers. Every process a
worker starts (its TensorFlow process, multiprocessing's resource tracker) is recorded, and
must be gone once the stack is torn down: nothing is left behind, whatever was killed.
Measured times are printed with a MEASURED prefix (`pytest -s` shows them).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
import requests
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry

from tapecore.limits import Limits
from tapecore.protocol import JOB_FUNCTION, PROBLEM_META, OrjsonSerializer, payload_key, queue_name
from tests.conftest import RedisServer, Stack, free_port, start_stack, stop_stack, wait_until
from tests.examples import EXAMPLE_1
from worker import jobs
from worker.runner import TensorFlowProcess
from worker.tapeworker import LOST_JOB_BOUND_S, WORKER_TTL_S, TapeJob, TapeWorker

pytestmark = pytest.mark.e2e


def matmul_chain(n: int) -> str:
    """`n` chained 2500x2500 matmuls: ((a @ a) @ a) ... @ a."""
    return "(" * n + "a" + " @ a)" * n


# A 2500x2500 matmul takes 0.08 s on this kind of host's fastest CPUs and 0.7 s on its slowest,
# so these graphs are sized for the fastest: a test kills them or waits for them, never races them.
# 20 chained matmuls and their gradient (60 kernels, under max_total_elements): ~5 s at the
# fastest; killed or time-limited.
SLOW_GRAPH = {
    "tensors": {"a": {"fill": 0.001, "shape": [2500, 2500]}},
    "expression": f"reduce_sum({matmul_chain(20)})",
    "sources": ["a"],
}
# 16 matmuls (1.3 s at the fastest, ~11 s at the slowest, under STACK_LIMIT_S) whose answer is
# small: the gradient of the scalar that scales them.
MEDIUM_GRAPH = {
    "tensors": {"a": {"fill": 0.001, "shape": [2500, 2500]}, "s": 2.0},
    "expression": f"reduce_sum({matmul_chain(16)} * s)",
    "sources": ["s"],
}
CRASH_DETECTION_S = 2.0  # the bound: a crash fails its job within this
TIME_LIMIT_OVERSHOOT_S = 2.0  # ...and a time-out within the limit plus this
STACK_LIMIT_S = "20"  # the time limit of the stacks that are not testing it


# -- processes, read with psutil ---------------------------------------------------------------


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie waiting to be reaped."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return set()
    return {child.pid for child in children if alive(child.pid)}


def tensorflow_process(worker_pid: int) -> int | None:
    """The worker's TensorFlow process: its spawned child (not the resource tracker)."""
    for pid in descendants(worker_pid):
        try:
            if any("spawn_main" in arg for arg in psutil.Process(pid).cmdline()):
                return pid
        except psutil.NoSuchProcess:
            continue
    return None


# -- a private stack per test ----------------------------------------------------------------------


@dataclass
class FaultStack:
    """A stack with its own redis-server, the workers' log files, and every process they started."""

    stack: Stack
    redis: RedisServer
    logs: list[Path]
    seen: set[int] = field(default_factory=set)

    @property
    def workers(self) -> list[subprocess.Popen[bytes]]:
        return self.stack.workers

    def remember(self) -> None:
        """Record the processes the workers have started (checked to be gone at the end)."""
        for worker in self.workers:
            if worker.poll() is None:
                self.seen |= descendants(worker.pid)

    def tf_pid(self, i: int, other_than: int | None = None) -> int:
        """The TensorFlow process of worker `i` once it is warm (a new one, if `other_than`)."""
        found: list[int] = []

        def warm() -> bool:
            pid = tensorflow_process(self.workers[i].pid)
            if pid is None or pid == other_than:
                return False
            found.append(pid)
            return any(r["message"].startswith(f"TensorFlow process {pid} ready") for r in self.records(i))

        wait_until(warm, 120, f"a warm TensorFlow process in worker {i}")
        self.remember()
        return found[-1]

    def records(self, i: int) -> list[dict[str, Any]]:
        """Worker `i`'s JSON log records (TensorFlow's own lines are not JSON: skipped)."""
        out = []
        for line in self.logs[i].read_bytes().splitlines():
            if line.startswith(b"{"):
                try:
                    out.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    continue
        return out

    def job(self, job_id: str) -> Job:
        client = self.redis.client()
        try:
            job = Job.fetch(job_id, connection=client, serializer=OrjsonSerializer)
            job.get_status()
            return job
        finally:
            client.close()

    def worker_running(self, job_id: str) -> int:
        """The index of the worker that runs the job (RQ names ours pool.host.pid)."""
        pid = int(str(self.job(job_id).worker_name).rsplit(".", 1)[1])
        return [w.pid for w in self.workers].index(pid)

    def readyz_workers(self) -> int:
        return int(self.stack.get("/readyz").json()["workers"].get("cpu", 0))


def build_stack(logdir: Path, workers: int, **env: str) -> FaultStack:
    server = RedisServer(free_port(), tempfile.mkdtemp(prefix="tapeserve-faults-redis-"))
    server.start()
    fs = FaultStack(start_stack(server, {"TAPESERVE_TIME_LIMIT_S": STACK_LIMIT_S, **env}), server, [])
    for i in range(workers):
        fs.logs.append(logdir / f"worker-{i}.log")
        fs.stack.start_worker(log=fs.logs[-1])
    fs.stack.wait_ready()
    wait_until(lambda: fs.readyz_workers() == workers, 120, f"{workers} workers")
    for i in range(workers):
        fs.tf_pid(i)
    return fs


def tear_down(fs: FaultStack) -> None:
    """Stop everything, then check that no process a worker started has outlived it."""
    fs.remember()
    try:
        stop_stack(fs.stack)
    finally:
        fs.redis.stop()
        shutil.rmtree(fs.redis.workdir, ignore_errors=True)
    deadline = time.monotonic() + 10
    while (left := {pid for pid in fs.seen if alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes left behind by the workers: {sorted(left)}"


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., FaultStack]]:
    made: list[FaultStack] = []

    def make(workers: int = 1, **env: str) -> FaultStack:
        logdir = tmp_path / f"stack-{len(made)}"
        logdir.mkdir()
        made.append(build_stack(logdir, workers, **env))
        return made[-1]

    yield make
    for fs in made:
        tear_down(fs)


# -- the client's view -----------------------------------------------------------------------------


def post_async(stack: Stack, doc: dict[str, Any]) -> tuple[str, str]:
    r = stack.post(doc, headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    return r.headers["Location"], r.json()["id"]


def wait_for_status(stack: Stack, location: str, wanted: str, timeout: float) -> dict[str, Any]:
    """Poll the job until it has `wanted` status; fail if it ends otherwise or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        doc = stack.get(location).json()
        if doc["status"] == wanted:
            return dict(doc)
        assert doc["status"] in ("queued", "started"), doc
        assert time.monotonic() < deadline, f"still {doc['status']} after {timeout} s"
        time.sleep(0.05)


def run_seconds(doc: dict[str, Any]) -> float:
    """How long RQ says the job ran, from its started_at and ended_at."""
    started, ended = (datetime.fromisoformat(doc[k].replace("Z", "+00:00")) for k in ("started_at", "ended_at"))
    return (ended - started).total_seconds()


def job_lines(fs: FaultStack, job_id: str) -> list[str]:
    """Every worker's one-per-job log line for this job."""
    return [
        r["message"]
        for i in range(len(fs.logs))
        for r in fs.records(i)
        if r["logger"] == "tapeserve.jobs" and r["message"].startswith(f"job {job_id} ")
    ]


def assert_next_request_succeeds(stack: Stack) -> None:
    r = stack.post(EXAMPLE_1, headers={"Prefer": "wait=60"})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["gradients"]["x"]["value"] == 6.0


@dataclass
class Killed:
    location: str
    job_id: str
    worker: int  # the index of the worker that ran it
    tf_pid: int  # its TensorFlow process, now killed
    at: float  # time.monotonic() of the kill


def kill_tensorflow_mid_job(fs: FaultStack) -> Killed:
    """Start the slow graph and SIGKILL the TensorFlow process running it."""
    location, job_id = post_async(fs.stack, SLOW_GRAPH)
    wait_for_status(fs.stack, location, "started", 60)
    i = fs.worker_running(job_id)
    tf = fs.tf_pid(i)
    time.sleep(0.5)  # well inside the graph's kernels
    os.kill(tf, signal.SIGKILL)
    return Killed(location, job_id, i, tf, time.monotonic())


# -- the tests ----------------------------------------------------------------------------------


def test_a_killed_tensorflow_process_fails_its_job_once_within_2_s_then_is_replaced_warm(
    make_stack: Callable[..., FaultStack],
) -> None:
    fs = make_stack(2)  # two workers: the failed job must not be run again on the other one
    killed = kill_tensorflow_mid_job(fs)
    doc = wait_for_status(fs.stack, killed.location, "failed", 30)
    detected = time.monotonic() - killed.at
    print(f"MEASURED crash detection: job failed {detected:.2f} s after SIGKILL of its TF process")
    assert detected <= CRASH_DETECTION_S
    error = doc["error"]
    assert error["status"] == 422
    assert error["type"] == "/problems/worker-crashed"
    assert error["title"] == "The worker crashed while running this graph"
    assert error["detail"] == "the worker crashed while running this graph (killed by SIGKILL)"

    # Ran once, failed once, not retried: a requeued job would be taken by the idle worker at once.
    time.sleep(1)
    assert fs.stack.get(killed.location).json()["status"] == "failed"
    job = fs.job(killed.job_id)
    assert job.get_status() == JobStatus.FAILED and job.retries_left is None
    assert len(job.results()) == 1  # one execution, one (failed) result
    client = fs.redis.client()
    try:
        queue = Queue(job.origin, connection=client, serializer=OrjsonSerializer)
        assert killed.job_id not in queue.get_job_ids()
        assert killed.job_id not in StartedJobRegistry(queue=queue).get_job_ids()
        assert killed.job_id in FailedJobRegistry(queue=queue).get_job_ids()
    finally:
        client.close()
    lines = job_lines(fs, killed.job_id)
    assert len(lines) == 1 and lines[0].endswith("outcome=worker-crashed"), lines

    # The same worker process goes on, with a new TensorFlow process, warm before its next job.
    assert fs.workers[killed.worker].poll() is None
    fs.tf_pid(killed.worker, other_than=killed.tf_pid)
    assert not alive(killed.tf_pid)
    assert_next_request_succeeds(fs.stack)


def test_a_graph_past_its_time_limit_is_stopped_within_the_limit_plus_2_s(
    make_stack: Callable[..., FaultStack],
) -> None:
    limit = 2.0
    fs = make_stack(1, TAPESERVE_TIME_LIMIT_S=f"{limit:g}")
    old_tf = fs.tf_pid(0)
    location, job_id = post_async(fs.stack, SLOW_GRAPH)
    doc = wait_for_status(fs.stack, location, "failed", 30)
    ran = run_seconds(doc)
    print(f"MEASURED time-out: a {limit:g} s limit stopped the job after {ran:.2f} s (RQ's started_at to ended_at)")
    assert limit <= ran <= limit + TIME_LIMIT_OVERSHOOT_S
    error = doc["error"]
    assert error["status"] == 422 and error["type"] == "/problems/time-limit-exceeded"
    assert "past the limit time_limit_s = 2" in error["errors"][0]["message"]
    assert job_lines(fs, job_id)[0].endswith("outcome=time-limit-exceeded")
    # Killed inside its kernels (the graph needs ~9 s), replaced, warm for the next job.
    assert not alive(old_tf)
    fs.tf_pid(0, other_than=old_tf)
    assert_next_request_succeeds(fs.stack)


def test_a_worker_killed_mid_job_leaves_a_failed_job_within_the_documented_bound(
    make_stack: Callable[..., FaultStack],
) -> None:
    fs = make_stack(2)
    location, job_id = post_async(fs.stack, SLOW_GRAPH)
    wait_for_status(fs.stack, location, "started", 60)
    i = fs.worker_running(job_id)
    victim, tf, job = fs.workers[i], fs.tf_pid(i), fs.job(job_id)
    time.sleep(1)
    os.kill(victim.pid, signal.SIGKILL)  # the RQ process alone: its TF process must die with it
    killed = time.monotonic()
    wait_until(lambda: not alive(tf), 2, "the dead worker's TensorFlow process to die with it")
    doc = wait_for_status(fs.stack, location, "failed", LOST_JOB_BOUND_S + 10)
    took = time.monotonic() - killed
    print(f"MEASURED lost worker: job failed {took:.1f} s after SIGKILL (bound LOST_JOB_BOUND_S = {LOST_JOB_BOUND_S})")
    assert took <= LOST_JOB_BOUND_S
    assert doc["error"]["status"] == 422
    assert doc["error"]["type"] == "/problems/worker-lost"
    assert job_lines(fs, job_id) == []  # it never finished anywhere: not run again
    assert_next_request_succeeds(fs.stack)  # on the surviving worker
    # The API stops counting the dead worker when its registration expires, in under WORKER_TTL_S.
    client = fs.redis.client()
    try:
        ttl = client.ttl(f"rq:worker:{job.worker_name}")
        assert ttl == -2 or 0 < ttl <= WORKER_TTL_S  # -2: already gone
    finally:
        client.close()


def test_redis_restart_under_traffic_is_answered_with_503_and_survived_without_restarts(
    make_stack: Callable[..., FaultStack],
) -> None:
    fs = make_stack(1)
    assert_next_request_succeeds(fs.stack)
    worker, tf = fs.workers[0], fs.tf_pid(0)
    answers: list[tuple[int, str | None]] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                r = requests.post(
                    f"{fs.stack.base}/v1/gradients", json=EXAMPLE_1, headers={"Prefer": "respond-async"}, timeout=60
                )
                answers.append((r.status_code, r.headers.get("Retry-After")))
            except Exception as exc:  # reported by the test, not lost in a thread
                failures.append(repr(exc))
            time.sleep(0.05)

    clients = [threading.Thread(target=client) for _ in range(3)]
    for t in clients:
        t.start()
    try:
        wait_until(lambda: any(code == 202 for code, _ in answers), 30, "the clients' first accepted request")
        # A job in flight when Redis goes: the worker finishes it but cannot record its outcome.
        location, in_flight = post_async(fs.stack, MEDIUM_GRAPH)
        wait_for_status(fs.stack, location, "started", 60)
        fs.redis.stop()
        assert job_lines(fs, in_flight) == [], "MEDIUM_GRAPH ended before Redis stopped: make it longer"
        down = fs.stack.get("/readyz")
        assert down.status_code == 503 and down.headers["Retry-After"], down.text
        assert down.json()["redis"].startswith("unreachable")
        wait_until(lambda: job_lines(fs, in_flight) != [], 60, "the in-flight job to end while Redis is down")
        time.sleep(1)
        fs.redis.start()  # same port, empty: without AOF it kept nothing
        back = time.monotonic()
        wait_until(lambda: fs.stack.get("/readyz").status_code == 200, 30, "/readyz green again")
        print(f"MEASURED Redis restart: /readyz green {time.monotonic() - back:.1f} s after Redis was back")
    finally:
        stop.set()
        for t in clients:
            t.join(60)
    assert_next_request_succeeds(fs.stack)
    codes = Counter(code for code, _ in answers)
    print(f"MEASURED Redis restart: answers to clients meanwhile {dict(codes)}")
    assert not failures, failures
    assert set(codes) <= {202, 503}, codes
    assert codes[503] >= 1 and codes[202] >= 1
    assert all(retry for code, retry in answers if code == 503)
    assert fs.stack.get(location).status_code == 404  # lost with the restart, as documented
    # The same worker process and the same (warm) TensorFlow process, after logged retries.
    assert worker.poll() is None and tensorflow_process(worker.pid) == tf
    messages = [r["message"] for r in fs.records(0)]
    assert any(m == f"job {in_flight}: Redis went away before its outcome was recorded" for m in messages), messages
    assert any(m.startswith("Redis unreachable") for m in messages), messages
    assert any(m.startswith("Redis reachable again") for m in messages), messages


def test_sigterm_mid_job_finishes_the_job_then_the_worker_exits(make_stack: Callable[..., FaultStack]) -> None:
    fs = make_stack(1)
    worker, tf = fs.workers[0], fs.tf_pid(0)
    location, job_id = post_async(fs.stack, MEDIUM_GRAPH)
    wait_for_status(fs.stack, location, "started", 60)
    time.sleep(0.2)
    os.killpg(worker.pid, signal.SIGTERM)  # the whole group, as Ctrl-C would: TF ignores it
    time.sleep(0.3)
    assert job_lines(fs, job_id) == [], "MEDIUM_GRAPH ended before the test looked: make it longer"
    assert alive(tf) and worker.poll() is None
    doc = wait_for_status(fs.stack, location, "finished", 60)
    finished = time.monotonic()
    assert doc["result"]["gradients"]["s"]["shape"] == []
    assert worker.wait(30) == 0
    print(f"MEASURED SIGTERM: the worker exited {time.monotonic() - finished:.1f} s after its job finished")
    wait_until(lambda: not alive(tf), 10, "the TensorFlow process to exit with its worker")
    assert job_lines(fs, job_id)[0].endswith("outcome=ok")


def test_rqs_own_job_timeout_is_a_time_limit_problem_and_the_busy_tf_process_is_not_reused(redis: Redis) -> None:
    # RQ's job timeout (SIGALRM) is a backstop behind the TF process's time limit; it fires first
    # only if the two are misconfigured. It interrupts the wait on a TF process that is still busy.
    runner = TensorFlowProcess(Limits(time_limit_s=60))
    runner.start()
    busy = runner.pid
    assert busy is not None
    jobs.install_runner(runner)
    try:
        queue = Queue(queue_name("cpu"), connection=redis, serializer=OrjsonSerializer)
        redis.set(payload_key("rq-timeout"), orjson.dumps(SLOW_GRAPH))
        job = queue.enqueue(JOB_FUNCTION, payload_key("rq-timeout"), job_id="rq-timeout", job_timeout=1)
        worker = TapeWorker([queue], connection=redis, serializer=OrjsonSerializer, job_class=TapeJob)
        worker.work(burst=True, logging_level="WARNING")
        job.refresh()
        assert job.get_status() == JobStatus.FAILED
        assert job.meta[PROBLEM_META]["type"] == "/problems/time-limit-exceeded"
        # Killed, not handed the next document while still busy; the next `run` starts another.
        assert not alive(busy) and not runner.warm and runner.pid is None
    finally:
        runner.close()
        jobs.install_runner(None)
