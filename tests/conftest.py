"""Fixtures: a private redis-server, the app and its client, an in-process worker, and
for end-to-end tests the real processes (gunicorn and `python -m worker`) on free ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import settings
from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# `make test` draws the same examples on every run (derandomized, no example database, no timing
# deadline on a loaded host); `make fuzz` sets TAPESERVE_HYPOTHESIS_PROFILE=fuzz for fresh random ones.
settings.register_profile("deterministic", derandomize=True, database=None, deadline=None)
settings.register_profile("fuzz", derandomize=False, database=None)
HYPOTHESIS_PROFILE = os.environ.get("TAPESERVE_HYPOTHESIS_PROFILE", "deterministic")
settings.load_profile(HYPOTHESIS_PROFILE)
FUZZING = HYPOTHESIS_PROFILE == "fuzz"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_ping(port: int) -> bool:
    client = Redis(port=port, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    finally:
        client.close()


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # the thing is still starting
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready within {timeout} s")


@dataclass
class RedisServer:
    """A private redis-server on a free port, which a test may stop and start again."""

    port: int
    workdir: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (.ci/run and `make test` install it)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: redis_ping(self.port), 10, "redis-server")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def client(self) -> Redis:
        return Redis.from_url(self.url)


def private_redis(prefix: str) -> Iterator[RedisServer]:
    """Start a private redis-server in a temp dir of its own; stop it and remove the dir after."""
    server = RedisServer(free_port(), tempfile.mkdtemp(prefix=prefix))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    yield from private_redis("tapeserve-redis-")


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[Redis]:
    """A clean Redis for this test (the private server, flushed)."""
    if redis_server.process is None:
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def app(redis: Redis, redis_server: RedisServer) -> Any:
    from service import create_app

    return create_app({"TESTING": True, "REDIS_URL": redis_server.url, "DEFAULT_WAIT_S": 0, "WORKER_CHECK_S": 0})


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@dataclass
class InProcessWorker:
    """Drives the worker's RQ worker (a SimpleWorker) in this process over the real Redis, as RQ's own tests do."""

    redis: Redis

    def make(self, pool: str) -> Any:
        from rq import Queue

        from tapecore.protocol import POOL_QUEUES, OrjsonSerializer, queue_name
        from worker.tapeworker import TapeJob, TapeWorker

        queues = [Queue(queue_name(q), connection=self.redis, serializer=OrjsonSerializer) for q in POOL_QUEUES[pool]]
        return TapeWorker(queues, connection=self.redis, serializer=OrjsonSerializer, job_class=TapeJob)

    def register(self, pool: str = "cpu") -> Any:
        """Register a worker for a pool (so the API sees one) without running jobs yet."""
        w = self.make(pool)
        w.register_birth()
        return w

    def work(self, pool: str = "cpu") -> None:
        """Run every queued job of the pool, then return."""
        self.make(pool).work(burst=True, logging_level="WARNING")


@pytest.fixture
def worker(redis: Redis) -> Iterator[InProcessWorker]:
    pytest.importorskip("tensorflow")  # the jobs run here; an image with the `api` extra alone has no engine
    from tapecore.limits import DEFAULT_LIMITS
    from worker import jobs
    from worker.runner import InProcessRunner

    jobs.install_runner(InProcessRunner(DEFAULT_LIMITS))  # the in-process engine: real TensorFlow, no TF subprocess
    yield InProcessWorker(redis)
    jobs.install_runner(None)


@dataclass
class Stack:
    """The real processes: redis-server, `python -m worker`, gunicorn; spoken to over HTTP."""

    redis: RedisServer
    base: str
    api: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]]
    env: dict[str, str]

    def post(self, body: Any, **kwargs: Any) -> requests.Response:
        return requests.post(f"{self.base}/v1/gradients", json=body, timeout=60, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(f"{self.base}{path}", timeout=60, **kwargs)

    def start_worker(self, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
        """Start `python -m worker` in its own session; its stderr goes to `log` if given."""
        sink = open(log, "ab") if log else None  # the child keeps its own copy
        try:
            proc = subprocess.Popen(
                [PYTHON, "-m", "worker", "--pool", "cpu", *args],
                cwd=ROOT,
                env=self.env,
                start_new_session=True,
                stderr=sink,
            )
        finally:
            if sink is not None:
                sink.close()
        self.workers.append(proc)
        return proc

    def wait_ready(self, timeout: float = 120) -> None:
        wait_until(lambda: self.get("/readyz").status_code == 200, timeout, "the stack")


def start_stack(redis_server: RedisServer, extra_env: dict[str, str] | None = None) -> Stack:
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "REDIS_URL": redis_server.url,
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "TAPESERVE_WORKER_CHECK_S": "0",
            "TAPESERVE_LOG_FORMAT": "json",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra_env or {})
    api = subprocess.Popen(
        [PYTHON, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "service:create_app()"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    stack = Stack(redis_server, f"http://127.0.0.1:{port}", api, [], env)
    try:
        wait_until(lambda: stack.get("/healthz").status_code == 200, 30, "gunicorn")
    except BaseException:
        stop_stack(stack)
        raise
    return stack


def stop_stack(stack: Stack) -> None:
    for proc in [*stack.workers, stack.api]:
        if proc.poll() is None:
            proc.terminate()
    for proc in [*stack.workers, stack.api]:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()  # a loaded host can take longer to finish a job; reap it all the same
            proc.wait(10)


@pytest.fixture(scope="session")
def stack_redis() -> Iterator[RedisServer]:
    yield from private_redis("tapeserve-e2e-redis-")


@pytest.fixture(scope="session")
def stack(stack_redis: RedisServer) -> Iterator[Stack]:
    """One live stack shared by the end-to-end tests: a worker and the API."""
    s = start_stack(stack_redis, {"TAPESERVE_TIME_LIMIT_S": "20"})
    try:
        s.start_worker()
        s.wait_ready()
        yield s
    finally:
        stop_stack(s)
