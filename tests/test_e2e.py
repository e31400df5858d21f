"""End to end: redis-server, `python -m worker` and gunicorn as real processes, over HTTP."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import requests

from tests.conftest import Stack
from tests.examples import EXAMPLE_1, EXAMPLE_2, EXAMPLE_2_GRAPH, EXAMPLE_3
from tests.test_faults import SLOW_GRAPH  # canceled here, long before it ends

pytestmark = pytest.mark.e2e


def test_contract_example_1(stack: Stack) -> None:
    r = stack.post(EXAMPLE_1)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "finished"
    assert body["result"]["target"] == {"value": 9.0, "dtype": "float32", "shape": []}
    assert body["result"]["gradients"] == {"x": {"value": 6.0, "dtype": "float32", "shape": []}}


@pytest.mark.parametrize("doc", [EXAMPLE_2, EXAMPLE_2_GRAPH], ids=["expression", "graph"])
def test_contract_example_2(stack: Stack, doc: dict[str, Any]) -> None:
    r = stack.post(doc)
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert result["target"]["value"] == 114.0
    assert result["gradients"]["x"] == {
        "value": [[6.0, 6.0, 6.0], [6.0, 6.0, 6.0]],
        "dtype": "float32",
        "shape": [2, 3],
    }
    assert result["gradients"]["z"] == {"value": 12.0, "dtype": "float32", "shape": []}


def test_contract_example_3(stack: Stack) -> None:
    # {"tensors": {"x": 2.0}, "expression": "x**2 + 2*x - 1", "sources": ["x"]}
    assert EXAMPLE_3["expression"] == "x**2 + 2*x - 1"
    r = stack.post(EXAMPLE_3)
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert result["target"]["value"] == 7.0 and result["gradients"]["x"]["value"] == 6.0
    assert "CPU" in result["device"]


@pytest.mark.parametrize(
    ("extra", "key", "want"),
    [
        ({"order": 2}, "gradients", {"x": 2.0}),
        ({"mode": "jacobian"}, "jacobians", {"x": 6.0}),
        ({"mode": "hessian"}, "hessians", {"x": 2.0}),
        ({"mode": "jvp", "tangents": {"x": 0.5}}, "jvp", 3.0),
    ],
    ids=["order-2", "jacobian", "hessian", "jvp"],
)
def test_every_mode_over_http(stack: Stack, extra: dict[str, Any], key: str, want: Any) -> None:
    r = stack.post({**EXAMPLE_1, **extra})
    assert r.status_code == 200, r.text
    got = r.json()["result"][key]
    if key == "jvp":
        assert got["value"] == want
    else:
        assert {k: v["value"] for k, v in got.items()} == want


def test_batch_jacobian_over_http(stack: Stack) -> None:
    doc = {
        "tensors": {"x": [[1.0, 2.0], [3.0, 4.0]]},
        "expression": "x * x",
        "sources": ["x"],
        "mode": "batch_jacobian",
    }
    r = stack.post(doc)
    assert r.status_code == 200, r.text
    assert r.json()["result"]["jacobians"]["x"]["value"] == [[[2.0, 0.0], [0.0, 4.0]], [[6.0, 0.0], [0.0, 8.0]]]


def test_respond_async_then_poll_until_finished(stack: Stack) -> None:
    r = stack.post(EXAMPLE_3, headers={"Prefer": "respond-async"})
    assert r.status_code == 202 and r.headers["Preference-Applied"] == "respond-async"
    location = r.headers["Location"]
    got = stack.get(location, headers={"Prefer": "wait=10"})
    assert got.status_code == 200 and got.headers["Preference-Applied"] == "wait=10"
    assert got.json()["status"] == "finished"
    assert got.json()["result"]["gradients"]["x"]["value"] == 6.0


def test_prefer_wait_zero_answers_202_at_once(stack: Stack) -> None:
    r = stack.post(EXAMPLE_1, headers={"Prefer": "wait=0"})
    assert r.status_code in (200, 202)  # a warm worker may already be done
    assert r.headers["Preference-Applied"] == "wait=0"


def test_a_failed_job_answers_its_problem_with_the_job_id(stack: Stack) -> None:
    doc = {"tensors": {"m": [[1.0, 2.0], [2.0, 4.0]]}, "expression": "reduce_sum(linalg.inv(m))", "sources": ["m"]}
    r = stack.post(doc)
    assert r.status_code == 422 and r.headers["Content-Type"] == "application/problem+json"
    body = r.json()
    assert body["job_id"] and body["instance"] == f"/v1/jobs/{body['job_id']}"
    assert "linalg.inv" in body["errors"][0]["message"]
    job = stack.get(body["instance"]).json()
    assert job["status"] == "failed" and job["error"]["status"] == 422


def test_cancel_a_running_job_then_the_next_request_works(stack: Stack) -> None:
    r = stack.post(SLOW_GRAPH, headers={"Prefer": "respond-async"})
    location = r.headers["Location"]
    deadline = time.monotonic() + 30
    while stack.get(location).json()["status"] != "started":
        assert time.monotonic() < deadline, "the slow job never started"
        time.sleep(0.1)
    assert requests.delete(stack.base + location, timeout=10).status_code == 204
    deadline = time.monotonic() + 30
    while (status := stack.get(location).json()["status"]) == "started":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert status == "canceled"
    # The worker replaces the killed TensorFlow process (a few seconds) before the next job.
    after = stack.post(EXAMPLE_3, headers={"Prefer": "wait=60"})
    assert after.status_code == 200 and after.json()["result"]["gradients"]["x"]["value"] == 6.0


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"data": b"{oops", "headers": {"Content-Type": "application/json"}}, 400),
        ({"data": b"{}", "headers": {"Content-Type": "text/plain"}}, 415),
        ({"json": {"tensors": {"x": {"fill": 1, "shape": [10**5, 10**5]}}, "expression": "x", "sources": ["x"]}}, 413),
        ({"json": {"tensors": {"x": 1.0}, "expression": "x.T", "sources": ["x"]}}, 422),
        ({"json": {**EXAMPLE_1, "device": "gpu"}}, 503),
    ],
    ids=["400", "415", "413", "422", "503-no-gpu-worker"],
)
def test_error_statuses_are_problem_documents(stack: Stack, kwargs: dict[str, Any], status: int) -> None:
    r = requests.post(f"{stack.base}/v1/gradients", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["detail"] and "Traceback" not in r.text


def test_unknown_job_is_404(stack: Stack) -> None:
    r = stack.get("/v1/jobs/00000000-0000-4000-8000-000000000000")
    assert r.status_code == 404 and r.json()["status"] == 404


def test_big_tensor_round_trip_json_and_b64(stack: Stack) -> None:
    import base64

    x = np.linspace(-1, 1, 300 * 200, dtype=np.float32).reshape(300, 200)
    doc = {"tensors": {"x": x.tolist()}, "expression": "reduce_sum(x * x)", "sources": ["x"]}
    got = np.asarray(stack.post(doc).json()["result"]["gradients"]["x"]["value"], dtype=np.float32)
    np.testing.assert_allclose(got, 2 * x, rtol=1e-6)
    b64 = {
        "tensors": {"x": {"b64": base64.b64encode(x.tobytes()).decode(), "dtype": "float32", "shape": [300, 200]}},
        "expression": "reduce_sum(x * x)",
        "sources": ["x"],
        "encoding": "b64",
    }
    out = stack.post(b64).json()["result"]["gradients"]["x"]
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(out["b64"]), "<f4").reshape(300, 200), 2 * x)


def test_readyz_reports_the_worker(stack: Stack) -> None:
    body = stack.get("/readyz").json()
    assert body["status"] == "ok" and body["workers"]["cpu"] >= 1
