"""Prometheus metrics of a worker process: jobs, their durations, the compile cache, TF restarts.

Served by `python -m worker --metrics-port N` (each of `--processes` gets N, N+1, ...).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram, start_http_server

JOBS = Counter("tapeserve_worker_jobs_total", "Jobs run, by mode and outcome", ["mode", "outcome"])
JOB_SECONDS = Histogram(
    "tapeserve_worker_job_seconds",
    "Time to run a job in the TensorFlow process, by mode",
    ["mode"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CACHE = Counter("tapeserve_worker_compile_cache_total", "Compiled-function cache lookups, by result", ["result"])
TF_RESTARTS = Counter("tapeserve_worker_tf_restarts_total", "TensorFlow processes replaced, by reason", ["reason"])

_last_cache: dict[str, int] = {}


def record_job(mode: str, outcome: str, seconds: float, info: dict[str, Any]) -> None:
    """Count one job, and the cache lookups the TF process reports since the last job."""
    JOBS.labels(mode, outcome).inc()
    JOB_SECONDS.labels(mode).observe(seconds)
    cache = info.get("cache")
    if not cache:
        return
    for result in ("hits", "misses"):
        now, before = int(cache.get(result, 0)), _last_cache.get(result, 0)
        # The counts start again in a new TF process: then all of `now` is new.
        CACHE.labels(result).inc(now - before if now >= before else now)
        _last_cache[result] = now


def serve(port: int) -> None:
    """Serve /metrics on this port (0: not at all)."""
    if port:
        start_http_server(port, addr="0.0.0.0")
