"""The API under pressure, with real parts: a Redis that is full (maxmemory, noeviction) or
read-only answers 503 with Retry-After on every endpoint, never 500; the bytes of request
bodies in flight are capped per process; a batch's ops are bounded; a chunked body over the
limit is a 413."""

from __future__ import annotations

import http.client
import io
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis.exceptions
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from werkzeug.serving import make_server

from service import create_app
from tapecore.limits import Limits
from tapecore.ops import REGISTRY
from tapecore.parsecache import REQUESTS
from tapecore.request import parse_request
from tests.conftest import InProcessWorker, free_port, redis_ping, start_stack, stop_stack, wait_until

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


def test_a_loading_redis_is_a_503_with_retry_after(tmp_path: Any) -> None:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed"
    port = free_port()
    base = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--appendonly", "no"]
    seed = subprocess.Popen(base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: redis_ping(port), 10, "redis-server")
    client = Redis(port=port)
    client.eval("for i = 1, 3000 do redis.call('set', 'k' .. i, 'v') end", 0)
    client.save()
    client.shutdown(nosave=True)
    seed.wait(10)
    # The same data loaded at 1 ms a key: Redis answers LOADING for at least 3 s, as after a restart.
    slow = ["--key-load-delay", "1000", "--loading-process-events-interval-bytes", "1024"]
    loading = subprocess.Popen([*base, *slow], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe = Redis(port=port, retry=Retry(NoBackoff(), 0))  # no retries: it sees LOADING as it is
    try:
        wait_until(lambda: _loading(probe), 10, "redis-server loading")
        api = app_on(f"redis://127.0.0.1:{port}/0").test_client()
        refused = api.post("/v1/gradients", json=GRAPH)
        assert_unavailable(refused, "POST /v1/gradients")
        assert refused.json["title"] == "The job store is loading"
        assert_unavailable(api.post("/v1/batches", json={"graphs": [GRAPH]}), "POST /v1/batches")
        assert_unavailable(api.get("/v1/jobs/00000000-0000-0000-0000-000000000000"), "GET /v1/jobs")
        ready = api.get("/readyz")
        assert ready.status_code == 503 and ready.json["redis"] == "unreachable (BusyLoadingError)"
        wait_until(lambda: redis_ping(port), 30, "the load to finish")
        assert api.get("/readyz").json["redis"] == "ok"
    finally:
        client.close()
        probe.close()
        loading.terminate()
        loading.wait(10)


def _loading(client: Redis) -> bool:
    try:
        client.ping()
    except redis.exceptions.BusyLoadingError:
        return True
    return False


# --- the bytes of bodies in flight, and chunked bodies over the limit: a real HTTP server ---

MAX_BODY = 100_000
INVALID = b'{"tensors": {"x": 3.0}, "expression": "mulitply(x, x)", "sources": ["x"]}'


@pytest.fixture
def served(redis: Redis, redis_server: Any) -> Iterator[tuple[Any, int]]:
    """The app under werkzeug's threaded server on a free port: one thread per connection."""
    app = app_on(redis_server.url, TESTING=False, MAX_BODY_BYTES=MAX_BODY, MAX_INFLIGHT_BODY_BYTES=150_000)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield app, server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def padded(body: bytes, size: int) -> bytes:
    return body + b" " * (size - len(body))  # JSON allows trailing white space


def long_json(size: int) -> bytes:
    """An invalid graph of `size` bytes whose JSON runs to its end: a truncated read cannot parse."""
    head, tail = b'{"expression": "mulitply(x, x)", "sources": ["x"], "tensors": {"x": [', b"1]}}"
    numbers = (size - len(head) - len(tail)) // 2
    return padded(head + b"1," * numbers + tail, size)


def post(port: int, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        sent = {"Content-Type": "application/json", **(headers or {})}
        conn.request("POST", "/v1/gradients", body=body, headers=sent, encode_chunked="Transfer-Encoding" in sent)
        answer = conn.getresponse()
        data = answer.read()
        return answer.status, dict(answer.getheaders()), orjson.loads(data) if data else None
    finally:
        conn.close()


def chunks(body: bytes, size: int = 8192) -> Iterator[bytes]:
    for at in range(0, len(body), size):
        yield body[at : at + size]


def open_body(port: int, length: int, first: bytes) -> socket.socket:
    """Start a POST whose body is `length` bytes long and send only its `first` bytes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"POST /v1/gradients HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
    sock.sendall(head.encode() + first)
    return sock


def reserved(app: Any) -> int:
    return int(app.extensions["tapeserve"].body_budget.reserved)


def test_bodies_in_flight_are_capped_and_released_however_a_request_ends(served: tuple[Any, int]) -> None:
    app, port = served
    body = padded(INVALID, MAX_BODY)
    slow = open_body(port, MAX_BODY, body[:10])  # a client still sending 100 kB
    wait_until(lambda: reserved(app) == MAX_BODY, 10, "the slow body's reservation")

    # 100 kB held of 150 kB: another 60 kB body is refused before it is read ...
    status, headers, problem = post(port, padded(INVALID, 60_000))
    assert status == 503 and headers["Retry-After"] == "7" and headers["Content-Type"] == PROBLEM
    assert problem["type"].endswith("/server-busy") and "at most 150000" in problem["detail"]
    # ... and so is a chunked one, which reserves a whole max_body_bytes ...
    status, _, problem = post(port, chunks(INVALID), {"Transfer-Encoding": "chunked"})
    assert status == 503 and problem["type"].endswith("/server-busy")
    # ... while a small one fits beside it.
    status, _, problem = post(port, INVALID)
    assert status == 422 and problem["errors"][0]["path"] == "/expression"

    slow.sendall(body[10:])  # the slow client finishes: it is answered, and its bytes come back
    assert b"422" in slow.recv(1024).split(b"\r\n", 1)[0]
    slow.close()
    wait_until(lambda: reserved(app) == 0, 10, "the budget released")
    assert post(port, padded(INVALID, 60_000))[0] == 422

    # A client that goes away mid-body gives its reservation back too.
    gone = open_body(port, MAX_BODY, body[:10])
    wait_until(lambda: reserved(app) == MAX_BODY, 10, "the reservation")
    gone.close()
    wait_until(lambda: reserved(app) == 0, 10, "the budget released after a disconnect")
    # A body over max_body_bytes is refused (413) unread, and never held a reservation.
    assert post(port, padded(INVALID, MAX_BODY + 1))[0] == 413
    assert reserved(app) == 0


def test_the_budget_must_admit_one_body_at_the_limit(redis_server: Any) -> None:
    with pytest.raises(ValueError, match="under max_body_bytes"):
        app_on(redis_server.url, MAX_BODY_BYTES=MAX_BODY, MAX_INFLIGHT_BODY_BYTES=MAX_BODY - 1)
    default = app_on(redis_server.url, MAX_BODY_BYTES=MAX_BODY)
    assert default.extensions["tapeserve"].body_budget.capacity == MAX_BODY + MAX_BODY // 4


def test_a_chunked_body_over_the_limit_is_a_413_over_real_http(served: tuple[Any, int]) -> None:
    _, port = served
    status, _, problem = post(port, chunks(long_json(MAX_BODY + 1)), {"Transfer-Encoding": "chunked"})
    assert status == 413, problem
    assert problem["type"].endswith("/request-entity-too-large")
    assert problem["detail"] == f"the body is over the limit max_body_bytes = {MAX_BODY}"
    # A chunked body under the limit is read whole, however many chunks it comes in.
    status, _, problem = post(port, chunks(long_json(MAX_BODY), 1000), {"Transfer-Encoding": "chunked"})
    assert status == 422 and problem["errors"][0]["path"] == "/expression"


def test_a_chunked_body_over_the_limit_is_a_413_through_gunicorn(redis: Redis, redis_server: Any) -> None:
    stack = start_stack(redis_server, {"TAPESERVE_MAX_BODY_BYTES": str(MAX_BODY)})
    try:
        port = int(stack.base.rsplit(":", 1)[1])
        status, headers, problem = post(port, chunks(long_json(MAX_BODY + 1)), {"Transfer-Encoding": "chunked"})
        assert status == 413 and headers["Content-Type"] == PROBLEM, problem
        assert problem["detail"] == f"the body is over the limit max_body_bytes = {MAX_BODY}"
        status, _, problem = post(port, chunks(long_json(MAX_BODY), 1000), {"Transfer-Encoding": "chunked"})
        assert status == 422 and problem["errors"][0]["path"] == "/expression"
    finally:
        stop_stack(stack)


def test_a_chunked_body_over_the_limit_is_a_413_in_the_test_client(redis_server: Any, redis: Redis) -> None:
    client = app_on(redis_server.url, MAX_BODY_BYTES=MAX_BODY).test_client()
    # As a server that decodes chunked bodies presents one: no Content-Length, input terminated.
    answer = client.post(
        "/v1/gradients",
        input_stream=io.BytesIO(long_json(MAX_BODY + 1)),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert answer.status_code == 413 and answer.mimetype == PROBLEM
    assert answer.json["detail"] == f"the body is over the limit max_body_bytes = {MAX_BODY}"


# --- max_batch_ops ---


def chain(n: int) -> dict[str, Any]:
    """A graph of n ops: x, then n times `sin` of the previous."""
    ops = [{"id": f"o{i}", "op": "sin", "inputs": [f"o{i - 1}" if i else "x"]} for i in range(n)]
    return {"tensors": {"x": 0.5}, "ops": ops, "target": f"o{n - 1}", "sources": ["x"]}


def test_a_batch_over_max_batch_ops_is_refused_before_its_graphs_are_checked(redis: Any, redis_server: Any) -> None:
    client = app_on(redis_server.url, MAX_BATCH_OPS=1_000).test_client()
    body = orjson.dumps({"graphs": [chain(50)] * 100})
    checked = REQUESTS.hits + REQUESTS.misses
    answer = client.post("/v1/batches", data=body, content_type="application/json")
    assert answer.status_code == 422 and answer.mimetype == PROBLEM
    assert answer.json["type"].endswith("/limit-exceeded")
    [error] = answer.json["errors"]
    assert error["path"] == "/graphs" and "max_batch_ops = 1000" in error["message"]
    assert "5000 ops" in error["message"]  # the count, from the ops written out
    assert (error["limit"], error["maximum"], error["estimate"]) == ("max_batch_ops", 1000, 5000)
    assert REQUESTS.hits + REQUESTS.misses == checked  # not one graph was checked


def test_an_expressions_ops_count_toward_max_batch_ops(redis: Any, redis_server: Any, worker: Any) -> None:
    client = app_on(redis_server.url, MAX_BATCH_OPS=10).test_client()
    worker.register()
    expression = {"tensors": {"x": 0.5}, "expression": "sin(sin(sin(x)))", "sources": ["x"]}  # 3 ops
    assert client.post("/v1/batches", json={"graphs": [expression] * 3 + [chain(1)]}).status_code == 202
    answer = client.post("/v1/batches", json={"graphs": [expression] * 3 + [chain(2)]})
    assert answer.status_code == 422
    assert answer.json["errors"][0]["path"] == "/graphs" and "11 ops" in answer.json["errors"][0]["message"]


def test_a_batch_whose_results_together_are_over_max_result_bytes_is_refused(
    redis: Any, redis_server: Any, worker: Any
) -> None:
    graph = {"tensors": {"x": {"fill": 0.5, "shape": [64, 64]}}, "expression": "sin(x)", "sources": ["x"]}
    one = parse_request(graph, REGISTRY, Limits()).cost
    assert one is not None
    client = app_on(redis_server.url, MAX_RESULT_BYTES=2 * one.result_bytes).test_client()
    worker.register()
    assert client.post("/v1/batches", json={"graphs": [graph, graph]}).status_code == 202
    answer = client.post("/v1/batches", json={"graphs": [graph, graph, graph]})
    assert answer.status_code == 422 and answer.json["type"].endswith("/limit-exceeded")
    [error] = answer.json["errors"]
    assert error["path"] == "/graphs" and error["limit"] == "max_result_bytes"
    assert (error["maximum"], error["estimate"]) == (2 * one.result_bytes, 3 * one.result_bytes)
