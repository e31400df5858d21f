"""The API over a real Redis, with the worker's RQ worker run in this process for the jobs."""

from __future__ import annotations

import sys
import time
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.examples import EXAMPLE_1, EXAMPLE_2, EXAMPLE_3

PROBLEM = "application/problem+json"


def submit(client: Any, body: Any, **headers: str) -> Any:
    return client.post("/v1/gradients", json=body, headers=headers)


def assert_problem(response: Any, status: int, *paths: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body = response.get_json(force=True)
    assert body["status"] == status and body["title"] and body["type"].startswith("/problems/")
    assert "Traceback" not in response.get_data(as_text=True)
    got = [e["path"] for e in body["errors"]]
    for path in paths:
        assert path in got, (path, body)
    return dict(body)


@pytest.mark.parametrize(
    ("example", "target", "grads"),
    [
        (EXAMPLE_1, 9.0, {"x": 6.0}),
        (EXAMPLE_2, 114.0, {"x": [[6.0] * 3] * 2, "z": 12.0}),
        (EXAMPLE_3, 7.0, {"x": 6.0}),
    ],
    ids=["example-1", "example-2", "example-3"],
)
def test_contract_examples_through_the_queue(client: Any, worker: Any, example: Any, target: Any, grads: Any) -> None:
    worker.register()
    posted = submit(client, example)
    assert posted.status_code == 202
    job_id = posted.get_json()["id"]
    assert posted.headers["Location"] == f"/v1/jobs/{job_id}"
    assert posted.get_json()["status"] == "queued"
    worker.work()
    got = client.get(f"/v1/jobs/{job_id}")
    assert got.status_code == 200
    job = got.get_json()
    assert job["status"] == "finished"
    assert job["result"]["target"]["value"] == target
    assert {k: v["value"] for k, v in job["result"]["gradients"].items()} == grads


def test_respond_async_is_applied(client: Any, worker: Any) -> None:
    worker.register()
    posted = submit(client, EXAMPLE_1, Prefer="respond-async")
    assert posted.status_code == 202
    assert posted.headers["Preference-Applied"] == "respond-async"


def test_a_graph_that_fails_at_run_time_is_a_failed_job_with_its_problem(client: Any, worker: Any) -> None:
    worker.register()
    doc = {
        "tensors": {"m": [[1.0, 2.0], [2.0, 4.0]]},
        "expression": "reduce_sum(linalg.inv(m))",
        "sources": ["m"],
    }
    job_id = submit(client, doc).get_json()["id"]
    worker.work()
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "failed"
    assert job["error"]["status"] == 422
    assert "linalg.inv" in job["error"]["errors"][0]["message"]


def test_unknown_job_is_404(client: Any) -> None:
    assert_problem(client.get("/v1/jobs/2b1c6d0e-0000-4000-8000-000000000000"), 404)
    assert_problem(client.delete("/v1/jobs/nope"), 404)


def test_delete_cancels_a_queued_job(client: Any, worker: Any) -> None:
    worker.register()
    job_id = submit(client, EXAMPLE_1).get_json()["id"]
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert client.get(f"/v1/jobs/{job_id}").get_json()["status"] == "canceled"
    worker.work()  # the canceled job is not run
    assert client.get(f"/v1/jobs/{job_id}").get_json()["status"] == "canceled"


def test_no_worker_for_the_pool_is_503_and_nothing_is_queued(client: Any, redis: Any) -> None:
    body = assert_problem(submit(client, EXAMPLE_1), 503)
    assert "no live worker" in body["detail"]
    assert not redis.keys("rq:job:*")


def test_a_worker_that_has_just_started_is_served_at_once(
    redis: Any, redis_server: Any, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service import create_app, jobqueue

    # Counts are reused for a minute here; only a "no worker" answer is looked at again soon.
    app = create_app({"TESTING": True, "REDIS_URL": redis_server.url, "DEFAULT_WAIT_S": 0, "WORKER_CHECK_S": 60})
    client = app.test_client()
    monkeypatch.setattr(jobqueue, "NO_WORKER_RECHECK_S", 0.0)
    assert_problem(submit(client, EXAMPLE_1), 503)
    worker.register()
    assert submit(client, EXAMPLE_1).status_code == 202


def test_a_wait_with_no_result_ends_in_202_with_the_job_queued_and_its_request_stored(
    client: Any, worker: Any, redis: Any
) -> None:
    from tapecore.protocol import payload_key

    worker.register()
    started = time.monotonic()
    response = submit(client, EXAMPLE_1, Prefer="wait=0.2")
    assert time.monotonic() - started >= 0.2
    assert response.status_code == 202 and response.headers["Preference-Applied"] == "wait=0.2"
    job_id = response.get_json()["id"]
    assert redis.exists(payload_key(job_id)) and redis.lrange("rq:queue:tapeserve:any", 0, -1) == [job_id.encode()]
    worker.work()
    assert client.get(f"/v1/jobs/{job_id}").get_json()["result"]["gradients"]["x"]["value"] == pytest.approx(6.0)


def test_gpu_request_without_a_gpu_worker_is_503(client: Any, worker: Any) -> None:
    worker.register("cpu")
    response = submit(client, {**EXAMPLE_1, "device": "gpu"})
    assert_problem(response, 503)
    assert response.headers["Retry-After"]


def test_body_that_is_not_json_is_400(client: Any) -> None:
    response = client.post("/v1/gradients", data=b"{not json", content_type="application/json")
    assert "not valid JSON" in assert_problem(response, 400)["detail"]


@pytest.mark.parametrize("body", [b"", b"   ", b"\xff\xfe{}", b'{"tensors": NaN}'])
def test_empty_or_invalid_bodies_are_400(client: Any, body: bytes) -> None:
    assert_problem(client.post("/v1/gradients", data=body, content_type="application/json"), 400)


def test_wrong_content_type_is_415(client: Any) -> None:
    response = client.post("/v1/gradients", data=b"{}", content_type="text/plain")
    assert_problem(response, 415)


def test_body_over_the_limit_is_413(redis_server: Any, redis: Any) -> None:
    from service import create_app

    app = create_app({"TESTING": True, "REDIS_URL": redis_server.url, "MAX_BODY_BYTES": 1000})
    body = {"tensors": {"x": [1.0] * 500}, "expression": "x", "sources": ["x"]}
    assert_problem(app.test_client().post("/v1/gradients", json=body), 413)


def test_tensor_over_the_element_limit_is_413(client: Any) -> None:
    body = {"tensors": {"x": {"fill": 1.0, "shape": [100000, 100000]}}, "expression": "x", "sources": ["x"]}
    problem = assert_problem(submit(client, body), 413, "/tensors/x")
    assert "max_tensor_elements" in problem["detail"]


@pytest.mark.parametrize(
    ("body", "paths"),
    [
        ({"tensors": {"x": 1.0}, "expression": "x * y", "sources": ["x"]}, ["/expression"]),
        ({"tensors": {"x": 1.0}, "expression": "x", "sources": ["x"], "bogus": 1}, ["/bogus"]),
        ({"tensors": {"x": 1.0}, "expression": "x", "sources": ["x"], "mode": "sideways"}, ["/mode"]),
        (
            {
                "tensors": {"x": [1.0, 2.0]},
                "ops": [{"id": "y", "op": "mulitply", "inputs": ["x", "x"]}],
                "target": "y",
                "sources": ["x"],
            },
            ["/ops/0/op"],
        ),
        ({"tensors": {"x": [[1.0], [2.0, 3.0]]}, "expression": "x", "sources": ["x"]}, ["/tensors/x/value/1"]),
        ({"tensors": {"n": {"value": 1, "dtype": "int32"}}, "expression": "n", "sources": ["n"]}, ["/sources/0"]),
        ({"tensors": {"x": 1.0}, "expression": "x", "sources": ["x"], "order": 99}, ["/order"]),
    ],
    ids=["unknown-name", "unknown-field", "bad-mode", "unknown-op", "ragged", "int-source", "order-limit"],
)
def test_invalid_graphs_are_422_with_pointers(client: Any, body: Any, paths: list[str]) -> None:
    assert_problem(submit(client, body), 422, *paths)


def test_unknown_op_suggests_the_closest_name(client: Any) -> None:
    body = {
        "tensors": {"x": [1.0, 2.0]},
        "ops": [{"id": "y", "op": "mulitply", "inputs": ["x", "x"]}],
        "target": "y",
        "sources": ["x"],
    }
    problem = assert_problem(submit(client, body), 422, "/ops/0/op")
    assert "did you mean 'multiply'" in problem["errors"][0]["message"]


def test_ops_endpoint_lists_the_registry(client: Any) -> None:
    body = client.get("/v1/ops").get_json()
    names = {op["name"] for op in body["ops"]}
    assert {"multiply", "reduce_sum", "matmul", "nn.relu"} <= names
    sigmoid = next(op for op in body["ops"] if op["name"] == "sigmoid")
    assert "math.sigmoid" in sigmoid["aliases"]
    assert body["limits"]["max_ops"] > 0


def test_health_and_readiness(client: Any, worker: Any) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.headers["Retry-After"]
    worker.register()
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["workers"]["cpu"] == 1


def test_openapi_and_docs_are_served_locally(client: Any) -> None:
    spec = client.get("/openapi.yaml")
    assert spec.status_code == 200 and b"openapi: 3.1" in spec.data
    page = client.get("/docs").get_data(as_text=True)
    assert "/docs/static/swagger-ui-bundle.js" in page and "http" not in page.split("<body>")[1].split("url:")[0]
    with client.get("/docs/static/swagger-ui-bundle.js") as bundle:
        assert bundle.status_code == 200 and b"SwaggerUIBundle" in bundle.data


def test_request_id_is_echoed_or_made_and_stored_in_the_job(client: Any, worker: Any) -> None:
    worker.register()
    made = client.get("/healthz").headers["X-Request-ID"]
    assert len(made) == 32
    posted = submit(client, EXAMPLE_1, **{"X-Request-ID": "trace-42"})
    assert posted.headers["X-Request-ID"] == "trace-42"
    from rq.job import Job

    from tapecore.protocol import OrjsonSerializer

    job = Job.fetch(posted.get_json()["id"], connection=worker.redis, serializer=OrjsonSerializer)
    assert job.meta["request_id"] == "trace-42"


def test_the_api_never_imports_tensorflow() -> None:
    import subprocess

    code = "import sys, service; service.create_app({'TESTING': True}); print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_503_problem_says_when_to_retry(app: Any) -> None:
    """A job's own 503 (its result could not be stored) carries Retry-After, as Redis outages do."""
    from service.problems import problem_from_document

    with app.test_request_context("/v1/gradients"):
        response = problem_from_document({"type": "x", "title": "t", "status": 503, "detail": "d", "errors": []})
        assert response.headers["Retry-After"] == str(app.config["RETRY_AFTER_S"])
        assert "Retry-After" not in problem_from_document({"status": 422, "errors": []}).headers


def test_past_the_parked_waits_a_wait_is_declined_and_answered_at_once(
    redis: Any, redis_server: Any, worker: Any
) -> None:
    """Long-polls cannot take every thread: past MAX_WAITING_REQUESTS the wait is declined (RFC 7240)."""
    import threading

    from service import create_app

    app = create_app({"TESTING": True, "REDIS_URL": redis_server.url, "WORKER_CHECK_S": 0, "MAX_WAITING_REQUESTS": 1})
    client = app.test_client()
    worker.register()
    job_id = submit(client, EXAMPLE_1, Prefer="respond-async").get_json()["id"]
    parked = threading.Thread(target=lambda: app.test_client().get(f"/v1/jobs/{job_id}", headers={"Prefer": "wait=3"}))
    parked.start()
    try:
        wait_until(lambda: app.extensions["tapeserve"].waits.parked == 1, 5, "the parked wait")
        started = time.monotonic()
        declined = client.get(f"/v1/jobs/{job_id}", headers={"Prefer": "wait=3"})
        posted = submit(client, EXAMPLE_3, Prefer="wait=3")
        assert time.monotonic() - started < 1.5, "neither waited for a slot"
        assert declined.status_code == 200 and declined.get_json()["status"] == "queued"
        assert "Preference-Applied" not in declined.headers
        assert posted.status_code == 202 and "Preference-Applied" not in posted.headers
    finally:
        parked.join(10)
    # The slot is given back when the parked wait ends: a wait is honoured again.
    again = client.get(f"/v1/jobs/{job_id}", headers={"Prefer": "wait=0.1"})
    assert again.headers["Preference-Applied"] == "wait=0.1"
