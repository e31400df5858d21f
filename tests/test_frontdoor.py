"""The front door, end to end: nginx in front of gunicorn's gevent workers, as deployed.

Two layouts, each with real processes over loopback: `make run` (scripts/run.py itself, nginx
on a TCP port and gunicorn on a unix socket) and compose's (the nginx template rendered from
docker-compose.yml's own values, gunicorn on TCP as the api service runs it). Both share one
private redis-server and the real worker that scripts/run.py starts.

What is held to: slow clients and long waits never starve `/healthz` or a small request, and
every error, nginx's and gunicorn's own included, is application/problem+json.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from redis import Redis

from tests.conftest import PYTHON, ROOT, RedisServer, free_port, wait_until

pytestmark = pytest.mark.e2e


def load_run_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tapeserve_run", ROOT / "scripts" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RUN = load_run_script()
NGINX = RUN.find_nginx()
NO_NGINX = "nginx is not installed (.ci/run installs it: python3 scripts/ensure_nginx.py)"
needs_nginx = pytest.mark.skipif(NGINX is None, reason=NO_NGINX)

# The load: 48 long-polls, then 40 clients that dribble a partial request.
LONG_POLLS = 48
DRIBBLERS = 40
LONG_POLL_WAIT_S = 15  # Prefer: wait=N; outlasts the measurement below with room to spare
DRIBBLE_EVERY_S = 0.5
PROBES = 50  # /healthz requests per measurement, one connection each
SLOWDOWN = 20  # loaded p99 within this many times the idle p99...
FLOOR_S = 0.2  # ...or this, whichever is larger: one TF op or GC pause on a busy 2-core host
SMALL_REQUEST_S = 2.0  # a small gradient, queued behind nothing, answers within this
MAX_BODY_BYTES = 1 << 20  # the stacks' body limit: small, so a body over it is quick to send

SMALL = {"tensors": {"x": 3.0}, "expression": "x*x", "sources": ["x"]}
# Over 8 KiB, the limit of nginx's large_client_header_buffers and gunicorn's limit_request_*.
HEADER_TOO_LARGE = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
REQUEST_LINE_TOO_LONG = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"


# -- raw HTTP over sockets ------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self) -> dict[str, Any]:
        assert self.headers.get("content-type") == "application/problem+json", (self.headers, self.body[:300])
        doc = json.loads(self.body)
        assert isinstance(doc, dict)
        assert doc["status"] == self.status
        assert doc["type"].startswith("/problems/") and doc["title"] and doc["detail"]
        return doc


def read_answer(sock: socket.socket, timeout: float = 10) -> Answer:
    """Read one HTTP/1.1 answer (Content-Length framed, or up to the close)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "-1"))
    while len(body) < length or length < 0:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return Answer(int(status_line.split()[1]), headers, body)


def exchange(port: int, data: bytes) -> Answer:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        return read_answer(sock)


def send_chunked(port: int, total: int) -> Answer:
    """POST a chunked body of `total` bytes, stopping early if the server answers first."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/gradients HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
        try:
            for _ in range(total // 65536):
                if select.select([sock], [], [], 0)[0]:
                    break  # answered already
                sock.sendall(chunk)
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-body: the answer is waiting to be read
        return read_answer(sock)


def listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def get_timed(port: int, path: str, timeout: float = 30) -> tuple[float, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        start = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return time.perf_counter() - start, response.status
    finally:
        conn.close()


def post_json(port: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[float, int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        start = time.perf_counter()
        conn.request("POST", "/v1/gradients", json.dumps(doc), {"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        body = response.read()
        return time.perf_counter() - start, response.status, body
    finally:
        conn.close()


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def healthz_latencies(port: int, count: int, budget_s: float = 60) -> list[float]:
    deadline = time.monotonic() + budget_s
    samples = []
    for _ in range(count):
        elapsed, status = get_timed(port, "/healthz")
        assert status == 200
        samples.append(elapsed)
        assert time.monotonic() < deadline, f"{len(samples)} /healthz answers took over {budget_s} s"
    return samples


# -- the load -------------------------------------------------------------------------------------


@dataclass
class Load:
    """Long-polls waiting on queued jobs and clients dribbling partial requests, all held open."""

    port: int
    long_polls: list[socket.socket] = field(default_factory=list)
    dribblers: list[socket.socket] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def hold_long_polls(self, count: int) -> None:
        # device "gpu": queued for a pool whose only worker is registered but idle, so each
        # request waits in the API for the whole of Prefer: wait, as on a busy service.
        body = json.dumps({**SMALL, "device": "gpu"}).encode()
        request = (
            b"POST /v1/gradients HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Prefer: wait=%d\r\nContent-Length: %d\r\n\r\n%s" % (LONG_POLL_WAIT_S, len(body), body)
        )
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            sock.sendall(request)
            self.long_polls.append(sock)

    def hold_dribblers(self, count: int) -> None:
        """Half send headers a byte at a time, half a body; neither ever finishes."""
        for i in range(count):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            if i % 2:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            else:
                sock.sendall(
                    b"POST /v1/gradients HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100000\r\n\r\n{"
                )
            self.dribblers.append(sock)
        threading.Thread(target=self._dribble, daemon=True).start()

    def _dribble(self) -> None:
        deadline = time.monotonic() + 60
        while not self.stop.wait(DRIBBLE_EVERY_S) and time.monotonic() < deadline:
            for sock in self.dribblers:
                try:
                    sock.send(b"a")
                except OSError:
                    pass  # cut off by the server: it may

    def long_polls_answered(self) -> int:
        return len(select.select(self.long_polls, [], [], 0)[0])

    def dribblers_cut_off(self) -> int:
        """Count dribblers the server has answered or closed (a readable socket)."""
        return len(select.select(self.dribblers, [], [], 0)[0])

    def close(self) -> None:
        self.stop.set()
        for sock in self.long_polls + self.dribblers:
            sock.close()


# -- the stacks -----------------------------------------------------------------------------------


@dataclass
class FrontDoor:
    """A deployed front door: `port` is where clients connect; `gunicorn_port` is behind it."""

    name: str
    port: int
    gunicorn_port: int | None = None


@pytest.fixture(scope="module")
def frontdoor_redis() -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tempfile.mkdtemp(prefix="tapeserve-frontdoor-redis-"))
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def idle_gpu_worker(frontdoor_redis: RedisServer) -> Iterator[None]:
    """Register a gpu-pool RQ worker that never takes a job: gpu jobs stay queued."""
    from rq import Queue

    from tapecore.protocol import POOL_QUEUES, OrjsonSerializer, queue_name
    from worker.tapeworker import TapeJob, TapeWorker

    connection = Redis.from_url(frontdoor_redis.url)
    queues = [Queue(queue_name(q), connection=connection, serializer=OrjsonSerializer) for q in POOL_QUEUES["gpu"]]
    idle = TapeWorker(queues, connection=connection, serializer=OrjsonSerializer, job_class=TapeJob)
    idle.register_birth()
    yield
    idle.register_death()
    connection.close()


def stack_env(redis: RedisServer) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "REDIS_URL": redis.url,
            "TAPESERVE_WORKER_CHECK_S": "0",
            "TAPESERVE_LOG_FORMAT": "json",
            "TAPESERVE_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


def interrupt(process: subprocess.Popen[bytes]) -> None:
    """Stop a process group as Ctrl-C in a terminal does; kill what is left after 30 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


@pytest.fixture(scope="module")
def make_run(frontdoor_redis: RedisServer, idle_gpu_worker: None) -> Iterator[FrontDoor]:
    """scripts/run.py, as `make run` starts it, on a free port."""
    port = free_port()
    env = stack_env(frontdoor_redis) | {"PORT": str(port)}
    run = subprocess.Popen([PYTHON, "scripts/run.py"], cwd=ROOT, env=env, start_new_session=True)
    try:
        wait_until(lambda: get_timed(port, "/readyz", 5)[1] == 200, 120, "make run")
        yield FrontDoor("make-run", port)
    finally:
        interrupt(run)
    assert run.returncode == 0, f"scripts/run.py exited {run.returncode} on Ctrl-C"
    wait_until(lambda: not group_alive(run.pid), 10, "the processes make run started to exit")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def compose_nginx_values(port: int, gunicorn_port: int) -> dict[str, str]:
    """The nginx service's template values from docker-compose.yml, made local."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    nginx, api = compose["services"]["nginx"], compose["services"]["api"]
    values = {k: str(v) for k, v in nginx["environment"].items() if k.startswith("TAPESERVE_")}
    assert values["TAPESERVE_API"] == f"api:{api['environment']['PORT']}"
    mounts = dict(reversed(volume.removesuffix(":ro").split(":", 1)) for volume in nginx["volumes"])
    values["TAPESERVE_PROBLEMS_DIR"] = str((ROOT / mounts[values["TAPESERVE_PROBLEMS_DIR"]]).resolve())
    values["TAPESERVE_LISTEN"] = f"127.0.0.1:{port}"
    values["TAPESERVE_API"] = f"127.0.0.1:{gunicorn_port}"
    values["TAPESERVE_MAX_BODY_BYTES"] = str(MAX_BODY_BYTES)
    template = ROOT / mounts["/etc/nginx/templates/default.conf.template"]
    assert template.resolve() == RUN.NGINX_TEMPLATE.resolve()
    return values


def start_nginx(workdir: Path, values: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start nginx as scripts/run.py does, with the template rendered from `values`."""
    assert NGINX is not None
    main = RUN.write_nginx_config(workdir, values)
    return subprocess.Popen([NGINX, "-p", str(workdir), "-e", "stderr", "-c", str(main)], start_new_session=True)


@pytest.fixture(scope="module")
def compose_layout(frontdoor_redis: RedisServer, make_run: FrontDoor) -> Iterator[FrontDoor]:
    """nginx with compose's rendering of the template, before gunicorn run as compose's api.

    Jobs go to the worker that make_run started, over the same Redis.
    """
    if NGINX is None:
        pytest.skip(NO_NGINX)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    api = compose["services"]["api"]
    gunicorn_port, port = free_port(), free_port()
    env = stack_env(frontdoor_redis)
    env.update({k: str(v) for k, v in api["environment"].items() if k.startswith("TAPESERVE_PROXY")})
    env.update({"HOST": "127.0.0.1", "PORT": str(gunicorn_port)})
    command = [PYTHON if word == "gunicorn" else word for word in api["command"]]
    if command[0] == PYTHON:
        command[1:1] = ["-m", "gunicorn"]
    processes = [subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)]
    with tempfile.TemporaryDirectory(prefix="tapeserve-compose-nginx-") as workdir:
        try:
            processes.append(start_nginx(Path(workdir), compose_nginx_values(port, gunicorn_port)))
            wait_until(lambda: get_timed(port, "/readyz", 5)[1] == 200, 60, "compose's front door")
            yield FrontDoor("compose", port, gunicorn_port)
        finally:
            for process in reversed(processes):
                interrupt(process)


@pytest.fixture(params=["make-run", "compose"])
def frontdoor(request: pytest.FixtureRequest) -> FrontDoor:
    fixture = {"make-run": "make_run", "compose": "compose_layout"}[request.param]
    found = request.getfixturevalue(fixture)
    assert isinstance(found, FrontDoor)
    return found


# -- the tests ------------------------------------------------------------------------------------


def queued_for_gpu(redis: RedisServer) -> int:
    from rq import Queue

    from tapecore.protocol import OrjsonSerializer, queue_name

    with Redis.from_url(redis.url) as connection:
        return Queue(queue_name("gpu"), connection=connection, serializer=OrjsonSerializer).count


def test_long_polls_and_slow_clients_do_not_starve_healthz_or_a_small_request(
    frontdoor: FrontDoor, frontdoor_redis: RedisServer
) -> None:
    port = frontdoor.port
    healthz_latencies(port, 5)  # connections and the first answers are warm
    assert post_json(port, SMALL)[1] == 200
    idle = healthz_latencies(port, PROBES)

    load = Load(port)
    try:
        queued = queued_for_gpu(frontdoor_redis)
        load.hold_long_polls(LONG_POLLS)
        # Each has reached the API, queued its job and waits on Redis.
        wait_until(lambda: queued_for_gpu(frontdoor_redis) == queued + LONG_POLLS, 10, "the long-polls' jobs")
        load.hold_dribblers(DRIBBLERS)
        time.sleep(DRIBBLE_EVERY_S * 2)  # each has sent more than its first bytes
        loaded = healthz_latencies(port, PROBES)
        elapsed, status, body = post_json(port, SMALL)
        answered_early = load.long_polls_answered()
        cut_off = load.dribblers_cut_off()
    finally:
        load.close()

    bound = max(SLOWDOWN * p99(idle), FLOOR_S)
    print(f"MEASURED {frontdoor.name}: /healthz p99 {p99(idle) * 1000:.1f} ms idle, {p99(loaded) * 1000:.1f} ms loaded")
    assert p99(loaded) <= bound, f"{frontdoor.name}: /healthz p99 {p99(loaded):.4f} s loaded, {p99(idle):.4f} s idle"
    assert answered_early == 0, "a long-poll ended before the measurement did: the load was not held"
    assert cut_off == 0, "a slow client was cut off before the measurement ended: the load was not held"
    assert status == 200, body
    assert json.loads(body)["result"]["gradients"]["x"]["value"] == 6.0
    assert elapsed < SMALL_REQUEST_S, f"{frontdoor.name}: a small request took {elapsed:.2f} s under load"


@needs_nginx
@pytest.mark.parametrize(
    ("request_bytes", "status", "kind"),
    [
        (HEADER_TOO_LARGE, 431, "request-header-fields-too-large"),
        (REQUEST_LINE_TOO_LONG, 414, "request-uri-too-long"),
        (b"GARBAGE\r\n\r\n", 400, "bad-request"),
        (
            b"POST /v1/gradients HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n{" % (MAX_BODY_BYTES + 1),
            413,
            "request-entity-too-large",
        ),
        (b"TRACE /healthz HTTP/1.1\r\nHost: t\r\n\r\n", 405, "method-not-allowed"),
        (b"POST /v1/gradients HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "not-implemented"),
        (b"GET /healthz HTTP/3.0\r\nHost: t\r\n\r\n", 505, "http-version-not-supported"),
    ],
    ids=[
        "header-too-large",
        "request-line-too-long",
        "malformed-request-line",
        "content-length-over-limit",
        "trace",
        "unknown-transfer-coding",
        "http-version",
    ],
)
def test_nginx_refusals_are_problem_documents(
    frontdoor: FrontDoor, request_bytes: bytes, status: int, kind: str
) -> None:
    answer = exchange(frontdoor.port, request_bytes)
    assert answer.status == status, answer
    assert answer.problem()["type"] == f"/problems/{kind}"


@needs_nginx
def test_a_chunked_body_over_the_limit_is_413_before_the_api_reads_it(make_run: FrontDoor) -> None:
    answer = send_chunked(make_run.port, 2 * MAX_BODY_BYTES)
    assert answer.status == 413
    assert answer.problem()["type"] == "/problems/request-entity-too-large"


@needs_nginx
def test_nginx_with_no_api_behind_it_answers_502_as_a_problem(tmp_path: Path) -> None:
    port = free_port()
    nothing_there = f"127.0.0.1:{free_port()}"
    values = RUN.template_values(listen=f"127.0.0.1:{port}", api=nothing_there, max_body_bytes=MAX_BODY_BYTES)
    nginx = start_nginx(tmp_path, values)
    try:
        wait_until(lambda: listening(port), 10, "nginx")
        answer = exchange(port, b"POST /v1/gradients HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
    finally:
        interrupt(nginx)
    assert answer.status == 502
    assert answer.problem()["type"] == "/problems/bad-gateway"


def test_the_apis_own_problems_pass_through_untouched(frontdoor: FrontDoor) -> None:
    elapsed, status, body = post_json(frontdoor.port, {"tensors": {}, "expression": "x", "sources": ["x"]})
    assert status == 422, body
    doc = json.loads(body)
    assert doc["instance"] == "/v1/gradients"  # the API's document, not a static page
    assert doc["errors"] and doc["errors"][0]["path"].startswith("/")


@pytest.fixture
def gunicorn_port(request: pytest.FixtureRequest) -> int:
    """Where gunicorn listens: behind compose's nginx, or make run's own port without nginx."""
    if NGINX is None:
        return int(request.getfixturevalue("make_run").port)
    port = request.getfixturevalue("compose_layout").gunicorn_port
    assert isinstance(port, int)
    return port


@pytest.mark.parametrize(
    ("request_bytes", "status", "kind"),
    [
        (HEADER_TOO_LARGE, 431, "request-header-fields-too-large"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n",
            431,
            "request-header-fields-too-large",
        ),
        (REQUEST_LINE_TOO_LONG, 414, "request-uri-too-long"),
        (b"GARBAGE\r\n\r\n", 400, "bad-request"),
        (b"GET /healthz HTTP/1.1\r\nHost: t\r\nBad Header: 1\r\n\r\n", 400, "bad-request"),
        (b"POST /v1/gradients HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 400, "bad-request"),
    ],
    ids=[
        "header-too-large",
        "too-many-headers",
        "request-line-too-long",
        "malformed-request-line",
        "bad-header-name",
        "unknown-transfer-coding",
    ],
)
def test_gunicorns_own_refusals_are_problem_documents(
    gunicorn_port: int, request_bytes: bytes, status: int, kind: str
) -> None:
    """gunicorn answers these itself, before the app: reached directly, behind nginx's back."""
    answer = exchange(gunicorn_port, request_bytes)
    assert answer.status == status, answer
    assert answer.problem()["type"] == f"/problems/{kind}"
