"""`openapi.yaml` against the service: a valid description of every route, and true of every answer.

Each documented (path, method, status) has at least one scenario here that makes the running app
(over the real Redis, with the worker's RQ worker in this process) give that status; the answer's media
type, headers and body are then checked against the spec, with every documented object closed
(`additionalProperties: false`), so a field the spec does not name fails too.
"""

from __future__ import annotations

import concurrent.futures
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate
from werkzeug.test import TestResponse

from tests.conftest import InProcessWorker, RedisServer, free_port
from tests.openapi_spec import (
    CONTRACT_PATH,
    HTTP_METHODS,
    SPEC,
    SPEC_PATH,
    ContractExample,
    Key,
    app_routes,
    assert_answer_is_documented,
    documented_statuses,
    is_within,
    media_examples,
    read_contract,
    request_examples,
    response_examples,
    schema_errors,
)

UNKNOWN_JOB = "2b1c6d0e-0000-4000-8000-000000000000"

OPERATION_IDS = {
    ("/v1/gradients", "post"): "postGradients",
    ("/v1/batches", "post"): "postBatch",
    ("/v1/jobs/{job_id}", "get"): "getJob",
    ("/v1/jobs/{job_id}", "delete"): "deleteJob",
    ("/v1/ops", "get"): "listOps",
    ("/v1/limits", "get"): "getLimits",
    ("/healthz", "get"): "healthz",
    ("/readyz", "get"): "readyz",
    ("/metrics", "get"): "metrics",
    ("/openapi.yaml", "get"): "getOpenapi",
    ("/docs", "get"): "docs",
    ("/docs/static/{filename}", "get"): "docsStatic",
    ("/problems/{kind}", "get"): "problemType",
}

# Documented statuses that no scenario here produces, each with the test that does. Empty: every
# status, 200 after a wait included (the POST waits in a thread while the worker runs here), is
# produced in process. Add an entry only with a reason that names the covering test.
COVERED_ELSEWHERE: frozenset[Key] = frozenset()


def _routes_of_a_fresh_app() -> dict[tuple[str, str], str]:
    """Read the routes off an app made for nothing else (it connects to no Redis)."""
    from service import create_app

    return app_routes(create_app({"TESTING": True, "REDIS_URL": "redis://127.0.0.1:1/0"}))


ROUTES = _routes_of_a_fresh_app()


# --- scenarios ----------------------------------------------------------------------------------


@dataclass
class Env:
    """What a scenario may use: the default app's client, the worker, and apps made to measure."""

    client: FlaskClient
    worker: InProcessWorker
    redis_url: str
    monkeypatch: pytest.MonkeyPatch

    def app(self, **config: Any) -> Flask:
        from service import create_app

        base = {"TESTING": True, "REDIS_URL": self.redis_url, "DEFAULT_WAIT_S": 0, "WORKER_CHECK_S": 0}
        return create_app({**base, **config})

    def client_of(self, **config: Any) -> FlaskClient:
        return self.app(**config).test_client()

    def redis_down(self) -> FlaskClient:
        """A client of an app whose Redis is a port where nothing listens."""
        return self.client_of(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")

    def run_while_waiting(self, request: Callable[[], TestResponse]) -> TestResponse:
        """Make a request that waits for a job (in a thread) while the worker runs the job here."""
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            answer = pool.submit(request)
            deadline = time.monotonic() + 10
            while not self.worker.redis.keys("rq:job:*"):
                assert not answer.done(), answer.result().get_data(as_text=True)
                assert time.monotonic() < deadline, "the job was not queued"
                time.sleep(0.01)
            self.worker.work()
            return answer.result(timeout=60)

    def submit(self, body: Any, client: FlaskClient | None = None, **headers: str) -> str:
        """Queue a job (202) and return its id."""
        response = (client or self.client).post("/v1/gradients", json=body, headers=headers)
        assert response.status_code == 202, response.get_data(as_text=True)
        return str(response.get_json()["id"])

    def fail_jobs_with(self, error: Exception) -> None:
        """Have jobs raise what the TensorFlow process raises on a crash or a stop."""
        from worker import jobs

        self.monkeypatch.setattr(jobs, "_runner", FailingRunner(error))


@dataclass
class FailingRunner:
    """Stands in for the worker's TensorFlow process: every run raises `error`."""

    error: Exception
    device: str = "stub"

    def run(self, kind: str, payload: Any, check_values: bool = True) -> tuple[bytes, dict[str, Any]]:
        raise self.error


@dataclass(frozen=True)
class Scenario:
    path: str
    method: str
    status: str  # as documented: "200", ..., or "default"
    name: str
    run: Callable[[Env], TestResponse]
    expect: int  # the status the answer must have

    @property
    def key(self) -> Key:
        return (self.path, self.method, self.status)

    def __str__(self) -> str:
        return f"{self.method.upper()} {self.path} {self.status} {self.name}"


SCENARIOS: list[Scenario] = []

EXAMPLE_1 = {"tensors": {"x": 3.0}, "expression": "x * x", "sources": ["x"]}
INVALID = {"tensors": {"x": 1.0}, "expression": "x * y", "sources": ["x"]}
BODIES: dict[str, Any] = {"/v1/gradients": EXAMPLE_1, "/v1/batches": {"graphs": [EXAMPLE_1]}}


def scenario(
    path: str, method: str, status: str, name: str | None = None
) -> Callable[[Callable[[Env], TestResponse]], Callable[[Env], TestResponse]]:
    def register(fn: Callable[[Env], TestResponse]) -> Callable[[Env], TestResponse]:
        expect = 500 if status == "default" else int(status)
        SCENARIOS.append(Scenario(path, method, status, name or "ok", fn, expect))
        return fn

    return register


def send(client: FlaskClient, path: str, method: str, job_id: str = UNKNOWN_JOB, **headers: str) -> TestResponse:
    """Make a plain request of this route: its usual body, path parameters filled in."""
    url = path.replace("{job_id}", job_id).replace("{filename}", "swagger-ui.css").replace("{kind}", "no-worker")
    return client.open(url, method=method.upper(), json=BODIES.get(path), headers=headers)


# POST /v1/gradients


@scenario("/v1/gradients", "post", "200", "finished-within-the-wait")
def _(env: Env) -> TestResponse:
    env.worker.register()
    response = env.run_while_waiting(lambda: send(env.client, "/v1/gradients", "post", Prefer="wait=30"))
    assert response.headers["Preference-Applied"] == "wait=30"
    assert response.get_json()["result"]["gradients"]["x"]["value"] == 6.0
    return response


@scenario("/v1/gradients", "post", "202", "queued")
def _(env: Env) -> TestResponse:
    env.worker.register()
    return send(env.client, "/v1/gradients", "post")


@scenario("/v1/gradients", "post", "202", "respond-async")
def _(env: Env) -> TestResponse:
    env.worker.register()
    response = send(env.client_of(DEFAULT_WAIT_S=30), "/v1/gradients", "post", Prefer="respond-async")
    assert response.headers["Preference-Applied"] == "respond-async"
    return response


@scenario("/v1/gradients", "post", "400", "not-json")
def _(env: Env) -> TestResponse:
    return env.client.post("/v1/gradients", data=b"{not json", content_type="application/json")


@scenario("/v1/gradients", "post", "400", "empty")
def _(env: Env) -> TestResponse:
    return env.client.post("/v1/gradients", data=b"", content_type="application/json")


@scenario("/v1/gradients", "post", "409", "stopped-while-the-post-waited")
def _(env: Env) -> TestResponse:
    # What the worker's TensorFlow process raises when DELETE stops the job it runs.
    from tapecore.errors import FieldError, JobStopped

    env.worker.register()
    env.fail_jobs_with(JobStopped(FieldError("", "the job was canceled while it ran")))
    response = env.run_while_waiting(lambda: send(env.client, "/v1/gradients", "post", Prefer="wait=30"))
    assert response.get_json()["job_id"] in response.headers["Location"]
    return response


@scenario("/v1/gradients", "post", "413", "tensor-over-its-limit")
def _(env: Env) -> TestResponse:
    body = {"tensors": {"x": {"fill": 1.0, "shape": [100_000, 100_000]}}, "expression": "x", "sources": ["x"]}
    return env.client.post("/v1/gradients", json=body)


@scenario("/v1/gradients", "post", "413", "body-over-its-limit")
def _(env: Env) -> TestResponse:
    body = {"tensors": {"x": [1.0] * 500}, "expression": "x", "sources": ["x"]}
    return env.client_of(MAX_BODY_BYTES=1000).post("/v1/gradients", json=body)


@scenario("/v1/gradients", "post", "415", "text-plain")
def _(env: Env) -> TestResponse:
    return env.client.post("/v1/gradients", data=b"{}", content_type="text/plain")


@scenario("/v1/gradients", "post", "422", "invalid-graph")
def _(env: Env) -> TestResponse:
    response = env.client.post("/v1/gradients", json=INVALID)
    assert response.get_json()["errors"][0]["path"] == "/expression"
    return response


@scenario("/v1/gradients", "post", "422", "job-failed-within-the-wait")
def _(env: Env) -> TestResponse:
    # What the worker's TensorFlow process raises when it dies under a graph.
    from tapecore.errors import FieldError, WorkerCrashed

    env.worker.register()
    env.fail_jobs_with(WorkerCrashed(FieldError("", "the TensorFlow process died while running this graph")))
    response = env.run_while_waiting(lambda: send(env.client, "/v1/gradients", "post", Prefer="wait=30"))
    assert response.get_json()["job_id"] in response.headers["Location"]
    return response


@scenario("/v1/gradients", "post", "503", "no-worker")
def _(env: Env) -> TestResponse:
    return send(env.client, "/v1/gradients", "post")


@scenario("/v1/gradients", "post", "503", "redis-down")
def _(env: Env) -> TestResponse:
    return send(env.redis_down(), "/v1/gradients", "post")


@scenario("/v1/gradients", "post", "503", "bodies-in-flight-over-budget")
def _(env: Env) -> TestResponse:
    app = env.app(MAX_BODY_BYTES=10_000, MAX_INFLIGHT_BODY_BYTES=10_000)
    app.extensions["tapeserve"].body_budget.reserve(10_000)  # as other requests' bodies would
    return send(app.test_client(), "/v1/gradients", "post")


# POST /v1/batches


@scenario("/v1/batches", "post", "200", "one-valid-one-invalid-graph")
def _(env: Env) -> TestResponse:
    env.worker.register()
    body = {"graphs": [EXAMPLE_1, INVALID]}
    response = env.run_while_waiting(lambda: env.client.post("/v1/batches", json=body, headers={"Prefer": "wait=30"}))
    assert [r["status"] for r in response.get_json()["result"]["results"]] == ["finished", "failed"]
    return response


@scenario("/v1/batches", "post", "202", "queued")
def _(env: Env) -> TestResponse:
    env.worker.register()
    return send(env.client, "/v1/batches", "post")


@scenario("/v1/batches", "post", "400", "not-json")
def _(env: Env) -> TestResponse:
    return env.client.post("/v1/batches", data=b"[", content_type="application/json")


@scenario("/v1/batches", "post", "413", "body-over-its-limit")
def _(env: Env) -> TestResponse:
    body = {"graphs": [{"tensors": {"x": [1.0] * 500}, "expression": "x", "sources": ["x"]}]}
    return env.client_of(MAX_BODY_BYTES=1000).post("/v1/batches", json=body)


@scenario("/v1/batches", "post", "415", "text-plain")
def _(env: Env) -> TestResponse:
    return env.client.post("/v1/batches", data=b"{}", content_type="text/plain")


@scenario("/v1/batches", "post", "422", "no-graphs")
def _(env: Env) -> TestResponse:
    return env.client.post("/v1/batches", json={"graphs": []})


@scenario("/v1/batches", "post", "422", "over-max-batch-graphs")
def _(env: Env) -> TestResponse:
    return env.client_of(MAX_BATCH_GRAPHS=1).post("/v1/batches", json={"graphs": [EXAMPLE_1, EXAMPLE_1]})


@scenario("/v1/batches", "post", "409", "stopped-while-the-post-waited")
def _(env: Env) -> TestResponse:
    # A batch is one task in one TensorFlow process: stopping it cancels the whole batch.
    from tapecore.errors import FieldError, JobStopped

    env.worker.register()
    env.fail_jobs_with(JobStopped(FieldError("", "the job was canceled while it ran")))
    response = env.run_while_waiting(lambda: send(env.client, "/v1/batches", "post", Prefer="wait=30"))
    assert response.get_json()["job_id"] in response.headers["Location"]
    return response


@scenario("/v1/batches", "post", "503", "no-worker")
def _(env: Env) -> TestResponse:
    return send(env.client, "/v1/batches", "post")


# GET and DELETE /v1/jobs/{job_id}


@scenario("/v1/jobs/{job_id}", "get", "200", "queued")
def _(env: Env) -> TestResponse:
    env.worker.register()
    return send(env.client, "/v1/jobs/{job_id}", "get", env.submit(EXAMPLE_1))


@scenario("/v1/jobs/{job_id}", "get", "200", "finished")
def _(env: Env) -> TestResponse:
    env.worker.register()
    job_id = env.submit(EXAMPLE_1)
    env.worker.work()
    response = send(env.client, "/v1/jobs/{job_id}", "get", job_id, Prefer="wait=5")
    assert response.get_json()["status"] == "finished" and response.headers["Preference-Applied"] == "wait=5"
    return response


@scenario("/v1/jobs/{job_id}", "get", "200", "failed")
def _(env: Env) -> TestResponse:
    from tapecore.errors import FieldError, TimeLimitExceeded

    env.worker.register()
    env.fail_jobs_with(TimeLimitExceeded(FieldError("", "the graph ran 60.0 s, past the limit time_limit_s = 60")))
    job_id = env.submit(EXAMPLE_1)
    env.worker.work()
    response = send(env.client, "/v1/jobs/{job_id}", "get", job_id)
    assert response.get_json()["error"]["type"].endswith("/time-limit-exceeded")
    return response


@scenario("/v1/jobs/{job_id}", "get", "200", "canceled")
def _(env: Env) -> TestResponse:
    env.worker.register()
    job_id = env.submit(EXAMPLE_1)
    assert send(env.client, "/v1/jobs/{job_id}", "delete", job_id).status_code == 204
    response = send(env.client, "/v1/jobs/{job_id}", "get", job_id)
    assert response.get_json()["status"] == "canceled"
    return response


@scenario("/v1/jobs/{job_id}", "get", "404", "unknown")
def _(env: Env) -> TestResponse:
    return send(env.client, "/v1/jobs/{job_id}", "get")


@scenario("/v1/jobs/{job_id}", "get", "404", "over-long-id")
def _(env: Env) -> TestResponse:
    return send(env.client, "/v1/jobs/{job_id}", "get", "x" * 200)


@scenario("/v1/jobs/{job_id}", "get", "404", "another-keys-job")
def _(env: Env) -> TestResponse:
    env.worker.register()
    client = env.client_of(API_KEYS="key-a,key-b")
    job_id = env.submit(EXAMPLE_1, client, **{"X-API-Key": "key-a"})
    assert send(client, "/v1/jobs/{job_id}", "get", job_id, **{"X-API-Key": "key-a"}).status_code == 200
    return send(client, "/v1/jobs/{job_id}", "get", job_id, **{"X-API-Key": "key-b"})


@scenario("/v1/ops", "get", "503", "rate-limit-store-down")
def _(env: Env) -> TestResponse:
    return env.client_of(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", RATE_LIMIT="10/second").get("/v1/ops")


@scenario("/v1/limits", "get", "503", "rate-limit-store-down")
def _(env: Env) -> TestResponse:
    return env.client_of(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", RATE_LIMIT="10/second").get("/v1/limits")


@scenario("/v1/jobs/{job_id}", "get", "503", "redis-down")
def _(env: Env) -> TestResponse:
    return send(env.redis_down(), "/v1/jobs/{job_id}", "get")


@scenario("/v1/jobs/{job_id}", "delete", "204", "queued")
def _(env: Env) -> TestResponse:
    env.worker.register()
    return send(env.client, "/v1/jobs/{job_id}", "delete", env.submit(EXAMPLE_1))


@scenario("/v1/jobs/{job_id}", "delete", "204", "finished")
def _(env: Env) -> TestResponse:
    env.worker.register()
    job_id = env.submit(EXAMPLE_1)
    env.worker.work()
    response = send(env.client, "/v1/jobs/{job_id}", "delete", job_id)
    assert send(env.client, "/v1/jobs/{job_id}", "get", job_id).status_code == 404
    return response


@scenario("/v1/jobs/{job_id}", "delete", "404", "unknown")
def _(env: Env) -> TestResponse:
    return send(env.client, "/v1/jobs/{job_id}", "delete")


@scenario("/v1/jobs/{job_id}", "delete", "404", "another-keys-job")
def _(env: Env) -> TestResponse:
    env.worker.register()
    client = env.client_of(API_KEYS="key-a,key-b")
    job_id = env.submit(EXAMPLE_1, client, Authorization="Bearer key-a")
    return send(client, "/v1/jobs/{job_id}", "delete", job_id, Authorization="Bearer key-b")


@scenario("/v1/jobs/{job_id}", "delete", "503", "redis-down")
def _(env: Env) -> TestResponse:
    return send(env.redis_down(), "/v1/jobs/{job_id}", "delete")


# The registry, health, metrics and docs


@scenario("/v1/ops", "get", "200")
def _(env: Env) -> TestResponse:
    response = send(env.client, "/v1/ops", "get")
    assert {"multiply", "add", "reduce_sum"} <= {op["name"] for op in response.get_json()["ops"]}
    return response


@scenario("/v1/limits", "get", "200")
def _(env: Env) -> TestResponse:
    from tapecore.limits import Limits

    response = send(env.client_of(MAX_OPS=7), "/v1/limits", "get")
    assert response.get_json() == {**Limits().as_dict(), "max_ops": 7}
    return response


@scenario("/healthz", "get", "200")
def _(env: Env) -> TestResponse:
    return send(env.redis_down(), "/healthz", "get")


@scenario("/readyz", "get", "200")
def _(env: Env) -> TestResponse:
    env.worker.register()
    return send(env.client, "/readyz", "get")


@scenario("/readyz", "get", "503", "no-worker")
def _(env: Env) -> TestResponse:
    return send(env.client, "/readyz", "get")


@scenario("/readyz", "get", "503", "redis-down")
def _(env: Env) -> TestResponse:
    return send(env.redis_down(), "/readyz", "get")


@scenario("/metrics", "get", "200")
def _(env: Env) -> TestResponse:
    send(env.client, "/healthz", "get")
    response = send(env.client, "/metrics", "get")
    assert 'tapeserve_http_requests_total{method="GET",route="/healthz",status="200"}' in response.get_data(
        as_text=True
    )
    return response


@scenario("/openapi.yaml", "get", "200")
def _(env: Env) -> TestResponse:
    response = send(env.client, "/openapi.yaml", "get")
    assert response.data == SPEC_PATH.read_bytes()
    return response


@scenario("/docs", "get", "200")
def _(env: Env) -> TestResponse:
    return send(env.client, "/docs", "get")


@scenario("/docs/static/{filename}", "get", "200")
def _(env: Env) -> TestResponse:
    return send(env.client, "/docs/static/{filename}", "get")


@scenario("/docs/static/{filename}", "get", "404", "no-such-file")
def _(env: Env) -> TestResponse:
    return env.client.get("/docs/static/no-such-file.js")


@scenario("/problems/{kind}", "get", "200")
def _(env: Env) -> TestResponse:
    response = send(env.client, "/problems/{kind}", "get")
    page = response.get_data(as_text=True)
    assert "No worker serves this device" in page and "503" in page
    return response


@scenario("/problems/{kind}", "get", "404", "no-such-kind")
def _(env: Env) -> TestResponse:
    response = env.client.get("/problems/no-such-kind")
    assert response.get_json()["type"] == "/problems/not-found"
    return response


# What every route answers alike: 401 and 429 on the non-public ones, a bug's 500 on all.


def _add_scenarios_of_every_route() -> None:
    from service.auth import PUBLIC_ENDPOINTS

    for (path, method), endpoint in sorted(ROUTES.items()):
        scenario(path, method, "default", "a-bug")(_a_bug(path, method, endpoint))
        if endpoint in PUBLIC_ENDPOINTS:
            continue
        scenario(path, method, "401", "no-key")(_with_keys_on(path, method))
        scenario(path, method, "401", "wrong-key")(_with_keys_on(path, method, **{"X-API-Key": "key-b"}))
        scenario(path, method, "429", "over-the-rate-limit")(_over_the_rate_limit(path, method))


def _with_keys_on(path: str, method: str, **headers: str) -> Callable[[Env], TestResponse]:
    def run(env: Env) -> TestResponse:
        return send(env.client_of(API_KEYS="key-a"), path, method, **headers)

    return run


def _a_bug(path: str, method: str, endpoint: str) -> Callable[[Env], TestResponse]:
    def run(env: Env) -> TestResponse:
        app = env.app(PROPAGATE_EXCEPTIONS=False)

        def broken(**kwargs: Any) -> Any:
            raise RuntimeError("a bug, never shown to the client")

        app.view_functions[endpoint] = broken
        response = send(app.test_client(), path, method)
        assert b"never shown" not in response.data and b"Traceback" not in response.data
        return response

    return run


def _over_the_rate_limit(path: str, method: str) -> Callable[[Env], TestResponse]:
    def run(env: Env) -> TestResponse:
        client = env.client_of(RATE_LIMIT="1/minute")
        send(client, path, method)
        return send(client, path, method)

    return run


_add_scenarios_of_every_route()


# --- the tests --------------------------------------------------------------------------------


@pytest.fixture
def env(
    client: FlaskClient, worker: InProcessWorker, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> Env:
    return Env(client, worker, redis_server.url, monkeypatch)


def test_the_spec_is_valid_openapi_3_1() -> None:
    assert SPEC["openapi"] == "3.1.0"
    validate(SPEC)


def test_every_named_schema_has_a_title_and_a_description() -> None:
    for name, schema in SPEC["components"]["schemas"].items():
        assert schema.get("title") == name and schema.get("description"), name


def test_every_route_is_in_the_spec_with_its_methods_and_nothing_else(app: Flask) -> None:
    documented = {(path, m) for path, item in SPEC["paths"].items() for m in HTTP_METHODS if m in item}
    served = set(app_routes(app))
    assert served - documented == set(), "routes the spec does not describe"
    assert documented - served == set(), "paths or methods the spec describes that the app does not serve"


def test_operation_ids() -> None:
    ids = {(path, m): item[m]["operationId"] for path, item in SPEC["paths"].items() for m in HTTP_METHODS if m in item}
    assert ids == OPERATION_IDS


def test_public_routes_need_no_key_and_the_others_document_401_and_429() -> None:
    from service.auth import PUBLIC_ENDPOINTS

    for (path, method), endpoint in ROUTES.items():
        operation = SPEC["paths"][path][method]
        if endpoint in PUBLIC_ENDPOINTS:
            assert operation.get("security") == [], (path, method)
            assert not {"401", "429"} & set(operation["responses"]), (path, method)
        else:
            assert "security" not in operation, (path, method)  # the spec's optional keys apply
            assert {"401", "429"} <= set(operation["responses"]), (path, method)
    assert {} in SPEC["security"], "keys are optional: a server without keys needs none"


def test_both_documented_key_schemes_are_accepted(env: Env) -> None:
    schemes = SPEC["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "apiKey", "in": "header"}
    client = env.client_of(API_KEYS="key-a")
    assert client.get("/v1/ops", headers={"Authorization": "Bearer key-a"}).status_code == 200
    assert client.get("/v1/ops", headers={schemes["apiKey"]["name"]: "key-a"}).status_code == 200
    assert client.get("/v1/ops").status_code == 401


def test_every_documented_status_has_a_scenario_and_every_scenario_is_documented() -> None:
    documented = documented_statuses()
    produced = {s.key for s in SCENARIOS}
    assert COVERED_ELSEWHERE <= documented, "COVERED_ELSEWHERE names statuses the spec does not document"
    assert not COVERED_ELSEWHERE & produced, "a status both produced here and listed as covered elsewhere"
    assert sorted(documented - COVERED_ELSEWHERE - produced) == [], "documented statuses no scenario produces"
    assert sorted(produced - documented) == [], "statuses the service answers that the spec does not document"


@pytest.mark.parametrize("case", SCENARIOS, ids=str)
def test_each_documented_status_is_answered_as_documented(env: Env, case: Scenario) -> None:
    if case.key not in documented_statuses():
        pytest.fail(f"the service answers {case} but the spec does not document it")
    response = case.run(env)
    try:
        assert response.status_code == case.expect, response.get_data(as_text=True)
        assert_answer_is_documented(response, case.key)
    finally:
        response.close()  # a file's answer holds the file open until closed


# --- examples --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "value"), [pytest.param(schema, value, id=where) for where, schema, value in media_examples()]
)
def test_every_example_fits_its_schema(schema: str, value: Any) -> None:
    errors = schema_errors(value, schema)
    assert not errors, "\n".join(errors)


def contract() -> tuple[dict[str, ContractExample], Any, Any]:
    if not CONTRACT_PATH.exists():
        pytest.skip(f"the wire contract is not at {CONTRACT_PATH}")
    return read_contract(CONTRACT_PATH.read_text())


def test_the_spec_examples_are_the_contracts() -> None:
    examples, graph, result = contract()
    assert sorted(examples) == ["example1", "example2", "example3"]
    requests, responses = request_examples(), response_examples()
    for name, example in examples.items():
        assert requests[name] == example.request, name
        answer = responses[name]["result"]
        assert answer["target"]["value"] == example.target, name
        assert {k: v["value"] for k, v in answer["gradients"].items()} == example.gradients, name
    assert requests["example2Graph"] == graph
    assert is_within(result, responses["example2"])


@pytest.mark.parametrize(
    ("request_name", "response_name"),
    [("example1", "example1"), ("example2", "example2"), ("example2Graph", "example2"), ("example3", "example3")],
)
def test_the_spec_examples_are_what_the_service_answers(env: Env, request_name: str, response_name: str) -> None:
    env.worker.register()
    body = request_examples()[request_name]
    response = env.run_while_waiting(lambda: env.client.post("/v1/gradients", json=body, headers={"Prefer": "wait=30"}))
    assert response.status_code == 200, response.get_data(as_text=True)
    got, want = response.get_json()["result"], response_examples()[response_name]["result"]
    # The device is the worker's own (a GPU worker's differs); the rest is exact.
    assert {k: v for k, v in got.items() if k != "device"} == {k: v for k, v in want.items() if k != "device"}


def test_request_ids_are_accepted_as_documented(env: Env) -> None:
    # Any request id is accepted; the answer's is the client's when it matches this, else a new one.
    pattern = re.compile(SPEC["components"]["headers"]["XRequestID"]["schema"]["pattern"])
    assert pattern.match("trace-42") and not pattern.match("no spaces")
    assert env.client.get("/healthz", headers={"X-Request-ID": "trace-42"}).headers["X-Request-ID"] == "trace-42"
    made = env.client.get("/healthz", headers={"X-Request-ID": "no spaces"}).headers["X-Request-ID"]
    assert made != "no spaces" and pattern.match(made)
    assert uuid.UUID(hex=made)
