"""Gunicorn settings for the API (`gunicorn -c gunicorn.conf.py "service:create_app()"`).

Threads, many of them: a request may wait (long-poll, up to MAX_WAIT_S) on Redis for its
result, and a waiting thread costs little while the job runs on a worker elsewhere. The API
parks at most TAPESERVE_MAX_WAITING_REQUESTS waits per process (fewer than the threads), so
long-polls never take every thread; slow clients are nginx's to absorb (`make run` and compose
put it in front). gevent held the long-polls as well, at half the throughput of threads at 16
clients (docs/scaling.md).
"""

import http
import json
import os

import gunicorn
from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker
from werkzeug.http import HTTP_STATUS_CODES

from tapecore.errors import problem_type

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))  # one per core on the 2-core reference host
threads = int(os.environ.get("GUNICORN_THREADS", "64"))  # requests served at once, per process
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))  # open connections, per process
timeout = 120  # > the longest wait a client may ask for (MAX_WAIT_S, 60 s) plus slack
graceful_timeout = 30
keepalive = 5
control_socket_disable = True  # unused; one per user's home, so concurrent servers would share it
accesslog = None  # per-request lines come from the app's own log at DEBUG, not here
errorlog = "-"
limit_request_line = 8190
limit_request_fields = 100

# gunicorn answers a request it cannot parse (a malformed request line, a header too large)
# itself, in HTML. Here those answers are RFC 9457 problem documents, as every other error.
# util.write_error is the one writer of them (workers/base.py, handle_error); a test sends each
# kind of bad request and checks what comes back.
SUPPORTED_GUNICORN = "27."  # the series whose handle_error this relies on


def write_problem(sock, status_int: int, reason: str, mesg: str) -> None:  # type: ignore[no-untyped-def]
    """Write gunicorn's own error answer as application/problem+json (util.write_error's signature)."""
    # Named as the API names werkzeug's HTTP errors (service/problems.py), so that a 431 is one
    # problem type whether gunicorn, nginx or the app refuses the request.
    if status_int == 500:
        title, kind = "Internal error", "internal-error"
    else:
        title = HTTP_STATUS_CODES.get(status_int, reason)
        kind = title.lower().replace(" ", "-")
    body = json.dumps(
        {
            "type": problem_type(kind),
            "title": title,
            "status": status_int,
            "detail": mesg[:512] or http.HTTPStatus(status_int).description,
            "errors": [],
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/problem+json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


class ProblemThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's threaded worker, whose own error answers are problem documents."""

    def init_process(self) -> None:
        if not gunicorn.__version__.startswith(SUPPORTED_GUNICORN):
            raise RuntimeError(f"gunicorn {gunicorn.__version__}: write_problem is written for {SUPPORTED_GUNICORN}x")
        util.write_error = write_problem
        super().init_process()


worker_class = ProblemThreadWorker

# prometheus-client's multiprocess mode: every gunicorn worker writes its metrics to files in
# one directory, which /metrics adds up. The directory must exist, empty, before they start.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    import tempfile

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tapeserve-prometheus-")


def on_starting(server):  # type: ignore[no-untyped-def]
    """Clear metrics left by an earlier run of the API."""
    import pathlib

    for stale in pathlib.Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"):
        stale.unlink()


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """Let the dead worker's gauges go."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


# After a large request or answer, give the freed heap back to the OS. glibc keeps what a
# 10 MB body, its parsed values and its result freed, in the arena of the thread that served
# it (measured: a worker stayed at 207 MB after four 1000x1000 JSON round trips, 47 MB before
# them; with this, 80-90 MB). malloc_trim(0) takes ~1 ms, so small requests skip it.
TRIM_AFTER_BYTES = 1 << 20  # a body sent or received at least this large (1 MiB)


def post_request(worker, req, environ, resp):  # type: ignore[no-untyped-def]
    length = environ.get("CONTENT_LENGTH") or "0"
    received = int(length) if length.isdigit() else 0
    if max(received, getattr(resp, "sent", 0) or 0) >= TRIM_AFTER_BYTES:
        _malloc_trim()


def _malloc_trim() -> None:
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        pass
