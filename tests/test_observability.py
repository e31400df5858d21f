"""Metrics that move, JSON log lines that carry the request id, and the GPU pool's refusal."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests

from tests.conftest import ROOT, RedisServer, Stack, free_port, start_stack, stop_stack, wait_until
from tests.examples import EXAMPLE_1, EXAMPLE_3

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: no other stack's worker takes its jobs."""
    server = RedisServer(free_port(), str(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def observed(own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, int, Path]]:
    """A stack whose worker serves metrics on a free port and logs JSON lines to a file."""
    log = tmp_path_factory.mktemp("logs") / "worker.log"
    port = free_port()
    stack = start_stack(own_redis)
    try:
        stack.start_worker("--metrics-port", str(port), log=log)
        stack.wait_ready()
        yield stack, port, log
    finally:
        stop_stack(stack)


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_api_and_worker_metrics_move(observed: tuple[Stack, int, Path]) -> None:
    stack, port, _ = observed
    worker_metrics = f"http://127.0.0.1:{port}/metrics"
    api_before, worker_before = stack.get("/metrics").text, requests.get(worker_metrics, timeout=10).text
    for _ in range(3):
        assert stack.post(EXAMPLE_3).status_code == 200
    assert stack.post({**EXAMPLE_1, "expression": "x.T"}).status_code == 422
    api_after, worker_after = stack.get("/metrics").text, requests.get(worker_metrics, timeout=10).text
    assert stack.get("/metrics").headers["Content-Type"].startswith("text/plain")

    route = {"route": "/v1/gradients", "method": "POST"}
    assert (
        sample(api_after, "tapeserve_http_requests_total", status="200", **route)
        - sample(api_before, "tapeserve_http_requests_total", status="200", **route)
        == 3
    )
    assert sample(api_after, "tapeserve_http_requests_total", status="422", **route) >= 1
    assert sample(api_after, "tapeserve_http_request_seconds_count", **route) >= 4
    assert sample(api_after, "tapeserve_workers", pool="cpu") == 1
    assert "tapeserve_queue_depth" in api_after and "tapeserve_jobs" in api_after

    done = sample(worker_after, "tapeserve_worker_jobs_total", mode="gradient", outcome="ok")
    assert done - sample(worker_before, "tapeserve_worker_jobs_total", mode="gradient", outcome="ok") == 3
    assert sample(worker_after, "tapeserve_worker_job_seconds_count", mode="gradient") >= 3
    lookups = sum(sample(worker_after, "tapeserve_worker_compile_cache_total", result=r) for r in ("hits", "misses"))
    assert lookups >= 3
    # example 3 three times: compiled at its second sighting, a hit at its third
    assert sample(worker_after, "tapeserve_worker_compile_cache_total", result="hits") >= 1


def test_the_request_id_travels_to_the_worker_log(observed: tuple[Stack, int, Path]) -> None:
    stack, _, log = observed
    response = stack.post(EXAMPLE_1, headers={"X-Request-ID": "trace-me-7"})
    assert response.headers["X-Request-ID"] == "trace-me-7"
    job_id = response.json()["id"]

    def logged() -> bool:
        return any(job_id in line for line in log.read_text().splitlines())

    wait_until(logged, 10, "the job's log line")
    line = next(line for line in log.read_text().splitlines() if job_id in line)
    record = orjson.loads(line)  # JSON lines: TAPESERVE_LOG_FORMAT=json in the stack
    assert record["level"] == "info" and "request=trace-me-7" in record["message"]
    assert "mode=gradient" in record["message"] and "ms=" in record["message"]


def test_a_gpu_worker_refuses_to_start_without_a_gpu(own_redis: RedisServer) -> None:
    tf = pytest.importorskip("tensorflow")
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible here; the refusal is for hosts without one")
    run = subprocess.run(
        [sys.executable, "-m", "worker", "--pool", "gpu", "--redis-url", own_redis.url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 2
    assert "TensorFlow sees no GPU" in run.stderr


@pytest.mark.gpu
def test_a_gpu_worker_runs_gpu_jobs_on_the_gpu(own_redis: RedisServer) -> None:
    tf = pytest.importorskip("tensorflow")
    if not tf.config.list_physical_devices("GPU"):
        pytest.skip("no GPU visible to TensorFlow on this host (CI has none); the device check runs this")
    stack = start_stack(own_redis, {"TAPESERVE_POOLS": "cpu,gpu"})
    try:
        proc = subprocess.Popen([sys.executable, "-m", "worker", "--pool", "gpu"], cwd=ROOT, env=stack.env)
        stack.workers.append(proc)
        wait_until(lambda: stack.get("/readyz").json()["workers"].get("gpu", 0) >= 1, 120, "the gpu worker")
        body = stack.post({**EXAMPLE_3, "device": "gpu"}).json()
        assert body["result"]["gradients"]["x"]["value"] == 6.0
        assert "GPU" in body["result"]["device"]
    finally:
        stop_stack(stack)
