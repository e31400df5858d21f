"""The API under pressure, with real parts: a Redis that is full (maxmemory, noeviction) or
read-only answers 503 with Retry-After on every endpoint, never 500; the bytes of request
bodies in flight are capped per process; a batch's ops are bounded; a chunked body over the
limit is a 413."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
import redis.exceptions
from redis import Redis

from service import create_app
from tests.conftest import InProcessWorker, free_port, redis_ping, wait_until

GRAPH = {"tensors": {"x": [1.0, 2.0]}, "expression": "reduce_sum(x * x)", "sources": ["x"]}
PROBLEM = "application/problem+json"
FULL_REDIS_BYTES = 8 * 1024 * 1024  # small enough to fill in a moment, big enough to start


@pytest.fixture(scope="module")
def small_redis() -> Iterator[str]:
    """A private redis-server capped at FULL_REDIS_BYTES that refuses writes when full, as compose's does."""
    port, workdir = free_port(), tempfile.mkdtemp(prefix="tapeserve-full-redis-")
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--maxmemory", str(FULL_REDIS_BYTES), "--maxmemory-policy", "noeviction"]
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed"
    process = subprocess.Popen([binary, *args], cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: redis_ping(port), 10, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def full_redis(small_redis: str) -> Iterator[Redis]:
    client = Redis.from_url(small_redis)
    client.flushall()
    yield client
    client.flushall()
    client.close()


def fill(client: Redis) -> int:
    """Write filler until Redis refuses a write; return how many keys it took."""
    written = 0
    # Big keys fill it fast; small ones then fill what a refused big write left (its query
    # buffer counted until it was refused). Bounded: 8 MiB takes ~130 big keys.
    for size in (64 * 1024, 64):
        for _ in range(100_000):
            try:
                client.set(f"filler:{written}", b"x" * size)
            except redis.exceptions.OutOfMemoryError:
                break
            written += 1
    return written


def free(client: Redis, keys: int) -> None:
    client.delete(*(f"filler:{i}" for i in range(keys)))


def app_on(url: str, **config: Any) -> Any:
    base = {"TESTING": True, "REDIS_URL": url, "DEFAULT_WAIT_S": 0, "WORKER_CHECK_S": 0, "RETRY_AFTER_S": 7}
    return create_app({**base, **config})


def assert_unavailable(response: Any, what: str) -> None:
    assert response.status_code == 503, (what, response.status_code, response.get_data()[:300])
    assert response.headers["Retry-After"] == "7", what
    assert response.mimetype == PROBLEM, what
    assert response.json["type"].endswith("/redis-unavailable"), (what, response.json)


def test_a_full_redis_is_a_503_with_retry_after_then_serves_again(small_redis: str, full_redis: Redis) -> None:
    client = app_on(small_redis).test_client()
    InProcessWorker(full_redis).register()
    queued = client.post("/v1/gradients", json=GRAPH)
    assert queued.status_code == 202
    job = queued.json["id"]
    keys = fill(full_redis)

    refused = client.post("/v1/gradients", json=GRAPH)
    assert_unavailable(refused, "POST /v1/gradients")
    assert refused.json["title"] == "The job store is full" and refused.json["errors"] == []
    assert_unavailable(client.post("/v1/batches", json={"graphs": [GRAPH, GRAPH]}), "POST /v1/batches")
    assert_unavailable(client.delete(f"/v1/jobs/{job}"), "DELETE /v1/jobs (a queued job: cancelling writes)")
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.headers["Retry-After"] == "7"
    assert ready.json == {"status": "unavailable", "redis": "refuses writes (OutOfMemoryError)", "workers": {}}
    # Reads need no memory: a job can still be looked at, and the catalogue needs no Redis.
    assert client.get(f"/v1/jobs/{job}").json["status"] == "queued"
    assert client.get("/v1/limits").status_code == 200

    free(full_redis, keys)
    assert client.post("/v1/gradients", json=GRAPH).status_code == 202
    assert client.delete(f"/v1/jobs/{job}").status_code == 204
    assert client.get("/readyz").status_code == 200


def test_with_the_rate_limit_on_every_v1_endpoint_is_a_503_when_redis_is_full(
    small_redis: str, full_redis: Redis
) -> None:
    client = app_on(small_redis, RATE_LIMIT="1000/minute").test_client()
    InProcessWorker(full_redis).register()
    job = client.post("/v1/gradients", json=GRAPH).json["id"]
    keys = fill(full_redis)
    calls = {
        "POST /v1/gradients": lambda: client.post("/v1/gradients", json=GRAPH),
        "POST /v1/batches": lambda: client.post("/v1/batches", json={"graphs": [GRAPH]}),
        "GET /v1/jobs": lambda: client.get(f"/v1/jobs/{job}"),
        "DELETE /v1/jobs": lambda: client.delete(f"/v1/jobs/{job}"),
        "GET /v1/limits": lambda: client.get("/v1/limits"),
        "GET /v1/ops": lambda: client.get("/v1/ops"),
    }
    for what, call in calls.items():
        assert_unavailable(call(), what)  # the limiter's own write is refused first
    assert client.get("/healthz").status_code == 200

    free(full_redis, keys)
    assert client.get("/v1/limits").status_code == 200
    assert client.get(f"/v1/jobs/{job}").status_code == 200


def test_a_read_only_redis_is_a_503_with_retry_after(small_redis: str, full_redis: Redis) -> None:
    client = app_on(small_redis).test_client()
    InProcessWorker(full_redis).register()
    # A replica of a master that is not there: it answers reads and refuses writes, as a
    # former primary does while a failover is under way.
    full_redis.replicaof("127.0.0.1", str(free_port()))
    try:
        assert_unavailable(client.post("/v1/gradients", json=GRAPH), "POST /v1/gradients")
        assert_unavailable(client.post("/v1/batches", json={"graphs": [GRAPH]}), "POST /v1/batches")
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json["redis"] == "refuses writes (ReadOnlyError)"
    finally:
        full_redis.replicaof("NO", "ONE")
    assert client.post("/v1/gradients", json=GRAPH).status_code == 202
