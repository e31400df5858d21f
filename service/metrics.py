"""Prometheus metrics of the API: requests, latency, queue depth and jobs per pool.

Under gunicorn, prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by
gunicorn.conf.py) adds up every worker process's counters at scrape time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from .state import Services, services

bp = Blueprint("metrics", __name__)

REQUESTS = Counter("tapeserve_http_requests_total", "HTTP requests answered", ["route", "method", "status"])
LATENCY = Histogram(
    "tapeserve_http_request_seconds",
    "Time to answer an HTTP request (including any wait for the result)",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


class QueueCollector(Collector):
    """Read queue depth and job counts per pool from Redis at scrape time."""

    def __init__(self, svc: Services):
        self.svc = svc

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("tapeserve_queue_depth", "Jobs waiting in each queue", labels=["queue"])
        jobs = GaugeMetricFamily("tapeserve_jobs", "Jobs kept in Redis by status", labels=["queue", "status"])
        workers = GaugeMetricFamily("tapeserve_workers", "Live workers per pool", labels=["pool"])
        for name, queue in self.svc.jobs.queues.items():
            depth.add_metric([name], queue.count)
            for status, registry_class in (
                ("started", StartedJobRegistry),
                ("finished", FinishedJobRegistry),
                ("failed", FailedJobRegistry),
            ):
                registry = registry_class(queue=queue)
                jobs.add_metric([name, status], registry.count)
        for pool, count in self.svc.jobs.workers().items():
            workers.add_metric([pool], count)
        yield depth
        yield jobs
        yield workers


def install_metrics(app: Flask) -> None:
    """Count and time every request, and serve `GET /metrics`."""

    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def record(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        if "started" in g:
            LATENCY.labels(route, request.method).observe(time.perf_counter() - g.started)
        return response

    app.register_blueprint(bp)


@bp.get("/metrics")
def metrics() -> Response:
    """Serve the metrics in Prometheus text format."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY as default

        registry = default  # type: ignore[assignment]
    text = generate_latest(registry) + generate_latest(_queue_registry())
    response = Response(text)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def _queue_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(QueueCollector(services()))
    return registry
