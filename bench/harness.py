"""Timing, statistics, HTTP clients, and the processes under test (started and stopped by PID)."""

from __future__ import annotations

import gc
import http.client
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
JSON_HEADERS = {"Content-Type": "application/json", "Prefer": "wait=60"}  # wait past any workload here
HTTP_TIMEOUT_S = 120.0  # a 1000x1000 JSON round trip to the naive app takes seconds, not minutes
START_TIMEOUT_S = 120.0  # TensorFlow's import alone takes ~4 s on the 2-core host; allow for a loaded one
POLL_S = 0.02  # how often a starting process is asked whether it is ready


def summarize(samples_s: Sequence[float]) -> dict[str, float]:
    """Return n, p50, p99, mean, min and max of durations in seconds, as milliseconds."""
    if not samples_s:
        return {"n": 0}
    ms = np.asarray(samples_s, dtype=np.float64) * 1000
    return {
        "n": int(ms.size),
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
        "min": float(ms.min()),
        "max": float(ms.max()),
    }


@dataclass
class Timing:
    """One mode's durations, its first timed answer, and the exception that stopped it, if any."""

    samples: list[float] = field(default_factory=list)
    first: Any = None
    failure: Exception | None = None


def time_interleaved(
    modes: Mapping[str, tuple[Callable[[Any], Any], Sequence[Any]]], warmup: int, budget_s: float = math.inf
) -> dict[str, Timing]:
    """Warm each mode up on its first `warmup` cases, then time the rest case by case, the modes in turn.

    Taking turns, rather than one mode after the other, spreads any change in the machine's load
    over every mode alike, so that their ratios hold even on a busy host. A mode stops once
    its timed cases have taken `budget_s` (after one at least), or at its first exception.
    """
    out = {name: Timing() for name in modes}
    for name, (run, cases) in modes.items():
        try:
            for case in cases[:warmup]:
                run(case)
        except Exception as exc:  # a failing mode is a result to report, not a reason to lose the run
            out[name].failure = exc
    gc.collect()  # so that no mode pays for the garbage of the warm-ups
    timed = min(len(cases) for _, cases in modes.values()) - warmup
    for k in range(timed):
        for name, (run, cases) in modes.items():
            timing = out[name]
            if timing.failure is not None or sum(timing.samples) >= budget_s:
                continue
            started = time.perf_counter()
            try:
                answer = run(cases[warmup + k])
            except Exception as exc:  # as above
                timing.failure = exc
                continue
            timing.samples.append(time.perf_counter() - started)
            if k == 0:
                timing.first = answer
    return out


class HttpError(Exception):
    """An answer other than the 200 the benchmark waits for."""

    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


class Connection:
    """One keep-alive HTTP/1.1 connection (http.client), opened again if the server closed it.

    The standard library's client costs ~0.1 ms a request where `requests` costs ~0.6 ms on
    this host: on 2 cores a heavy client would measure itself, and slow the servers it shares
    them with. Both servers, the service and the naive app, are spoken to the same way.
    """

    def __init__(self, base: str):
        parts = urllib.parse.urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._conn: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """Send one request; return the status, the headers and the whole body."""
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=HTTP_TIMEOUT_S)
            try:
                self._conn.request(method, path, body=body, headers=dict(headers or {}))
                response = self._conn.getresponse()
                return response.status, response.headers, response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()  # the server ended the keep-alive; a fresh connection, once
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Client:
    """One keep-alive connection to one server, speaking JSON with orjson, as a careful client would."""

    def __init__(self, base: str):
        self.base = base
        self.http = Connection(base)

    def post(self, path: str, doc: Any) -> Any:
        """POST a document and return the 200 answer (following a 202 to the job until it ends)."""
        status, headers, body = self.http.request("POST", path, orjson.dumps(doc), JSON_HEADERS)
        if status == 202:
            location = headers["Location"]
            while True:
                status, _, body = self.http.request("GET", location, None, JSON_HEADERS)
                if status != 200:
                    break
                answer = orjson.loads(body)
                if answer["status"] not in ("queued", "started"):
                    return answer
        if status != 200:
            raise HttpError(status, body.decode(errors="replace"))
        return orjson.loads(body)

    def enqueue_ms(self, path: str, doc: Any, n: int) -> dict[str, float]:
        """Time n POSTs answered 202 at once (`Prefer: respond-async`): the API's own share."""
        body, headers = orjson.dumps(doc), {**JSON_HEADERS, "Prefer": "respond-async"}
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            status, _, answer = self.http.request("POST", path, body, headers)
            samples.append(time.perf_counter() - started)
            if status != 202:
                raise HttpError(status, answer.decode(errors="replace"))
        return summarize(samples)

    def get_ms(self, path: str, n: int) -> dict[str, float]:
        """Time n GETs of a path that does no work: the cost of HTTP itself."""
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            status, _, answer = self.http.request("GET", path)
            samples.append(time.perf_counter() - started)
            if status != 200:
                raise HttpError(status, answer.decode(errors="replace"))
        return summarize(samples)


def hammer(url: str, doc: Any, clients: int, seconds: float) -> dict[str, Any]:
    """Send the document from `clients` threads, each with its own connection, for `seconds`."""
    body = orjson.dumps(doc)
    parts = urllib.parse.urlsplit(url)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    deadline = time.monotonic() + seconds

    def loop(k: int) -> None:
        conn = Connection(f"{parts.scheme}://{parts.netloc}")
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                ok = conn.request("POST", parts.path, body, JSON_HEADERS)[0] == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
            if ok:
                latencies[k].append(time.perf_counter() - started)
            else:
                errors[k] += 1
        conn.close()

    threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    every = [s for per in latencies for s in per]
    return {
        "clients": clients,
        "seconds": elapsed,
        "requests": len(every),
        "errors": sum(errors),
        "rps": len(every) / elapsed,
        "latency_ms": summarize(every),
        "samples_ms": [round(s * 1000, 3) for s in every],
    }


def redis_answers(url: str) -> bool:
    """Whether a Redis server answers PING at `url` (not yet listening: False, not an error)."""
    from redis import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    try:
        return bool(Redis.from_url(url).ping())
    except RedisConnectionError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: Process | None = None) -> float:
    """Poll until `check` says yes; return the seconds it took. Fail early if `proc` exits."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if check():
                return time.monotonic() - started
        except (requests.RequestException, OSError):
            pass  # not listening yet
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} while starting:\n{proc.tail()}")
        time.sleep(POLL_S)
    raise TimeoutError(f"{what} not ready within {timeout:.0f} s" + (f":\n{proc.tail()}" if proc else ""))


def answers_200(url: str) -> Callable[[], bool]:
    return lambda: requests.get(url, timeout=2).status_code == 200


@dataclass
class Process:
    """A process this benchmark started, with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (graceful for gunicorn, RQ and redis-server), SIGKILL if it lingers."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


@dataclass
class Stack:
    """The processes under test: redis-server, the API under gunicorn, workers, the naive app."""

    logdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tapeserve-bench-")))
    processes: list[Process] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def spawn(self, name: str, argv: list[str], cwd: Path = ROOT) -> Process:
        log = self.logdir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(argv, cwd=cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        proc = Process(name, popen, log)
        self.processes.append(proc)
        return proc

    def start_redis(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/ensure_redis.py installs it)")
        port = free_port()
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        proc = self.spawn("redis", argv, cwd=self.logdir)
        url = f"redis://127.0.0.1:{port}/0"
        wait_until(lambda: redis_answers(url), 10, "redis-server", proc)
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "REDIS_URL": url}
        return url

    def start_api(self) -> str:
        """Start gunicorn with the API's own settings; return its base URL once /healthz answers."""
        port = free_port()
        self.env = {**self.env, "HOST": "127.0.0.1", "PORT": str(port)}
        argv = [PYTHON, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "service:create_app()"]
        proc = self.spawn("api", argv)
        base = f"http://127.0.0.1:{port}"
        wait_until(answers_200(base + "/healthz"), START_TIMEOUT_S, "gunicorn (API)", proc)
        return base

    def start_workers(self, n: int, api: str) -> dict[str, float]:
        """Start n `python -m worker` processes; return the seconds until /readyz says ok.

        Also the seconds until the first registered itself in Redis (its RQ birth): /readyz
        reuses its answer for WORKER_CHECK_S, so it may say ok up to that much later.
        """
        from redis import Redis
        from rq import Worker

        wall = time.time()
        procs = [self.spawn(f"worker{k}", [PYTHON, "-m", "worker", "--pool", "cpu"]) for k in range(n)]
        ready = wait_until(answers_200(api + "/readyz"), START_TIMEOUT_S, "a worker (/readyz)", procs[0])
        births = [w.birth_date for w in Worker.all(connection=Redis.from_url(self.env["REDIS_URL"]))]
        first = min((b.timestamp() for b in births if b is not None), default=math.nan)
        return {"ready_s": ready, "registered_s": first - wall}

    def start_naive(self) -> str:
        port = free_port()
        argv = [PYTHON, "-m", "gunicorn", "-w", "1", "-k", "sync", "-b", f"127.0.0.1:{port}", "--timeout", "120"]
        proc = self.spawn("naive", [*argv, "bench.naive_app:create_app()"])
        base = f"http://127.0.0.1:{port}"
        wait_until(answers_200(base + "/healthz"), START_TIMEOUT_S, "gunicorn (naive app)", proc)
        return base

    def by_name(self, prefix: str) -> list[Process]:
        return [p for p in self.processes if p.name.startswith(prefix)]

    def roles(self) -> dict[str, dict[str, list[int]]]:
        """The processes a request of each HTTP mode runs through, by role: (c) the service, (d) the naive app."""
        workers = [p.pid for p in self.by_name("worker")]
        client = [os.getpid()]  # this process: the benchmark's client
        return {
            "c": {
                "api": [pid for p in self.by_name("api") for pid in (p.pid, *descendants(p.pid))],
                "worker": workers,
                "tensorflow": [child for pid in workers for child in descendants(pid)],
                "redis": [p.pid for p in self.by_name("redis")],
                "client": client,
            },
            "d": {
                "naive": [pid for p in self.by_name("naive") for pid in (p.pid, *descendants(p.pid))],
                "client": client,
            },
        }

    def stop(self) -> None:
        """Stop everything started here, newest first (workers before Redis)."""
        for proc in reversed(self.processes):
            proc.stop()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MiB; a process gone counts 0."""
    try:
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, children first."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_s(pids: Iterable[int]) -> float:
    """CPU time (user + system) the processes have used so far, in seconds; a process gone counts 0."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def tree_rss_mb(pid: int) -> dict[str, Any]:
    """RSS of a process and of everything below it, with the total."""
    parts = {pid: rss_mb(pid)} | {child: rss_mb(child) for child in descendants(pid)}
    return {"total": sum(parts.values()), "processes": {str(p): round(v, 1) for p, v in parts.items()}}


def machine_info() -> dict[str, Any]:
    # psutil does not name the CPU model; /proc/cpuinfo does.
    cpu = next((ln.split(":", 1)[1].strip() for ln in _lines("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_mb": psutil.virtual_memory().total // 2**20,
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()),
    }


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []
