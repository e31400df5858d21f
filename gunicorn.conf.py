"""Gunicorn settings for the API (`gunicorn -c gunicorn.conf.py "service:create_app()"`).

Threads, not processes alone: a request may wait (long-poll) on Redis for its result, and
a waiting thread costs little while the job runs on a worker elsewhere.
"""

import os

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))  # one per core on the 2-core reference host
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "16"))  # concurrent waits per process
timeout = 120  # > the longest wait a client may ask for (MAX_WAIT_S, 60 s) plus slack
graceful_timeout = 30
keepalive = 5
accesslog = None  # per-request lines come from the app's own log at DEBUG, not here
errorlog = "-"
limit_request_line = 8190
limit_request_fields = 100

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
