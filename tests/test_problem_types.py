"""Problem `type` URIs resolve to pages the API serves; "no worker" is a domain error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tapecore.errors import TapeserveError
from tests.examples import EXAMPLE_1

ROOT = Path(__file__).resolve().parent.parent


def all_error_classes() -> list[type[TapeserveError]]:
    found: list[type[TapeserveError]] = []
    todo: list[type[TapeserveError]] = [TapeserveError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_domain_error_kind_is_a_known_problem_type() -> None:
    from tapecore.errors import PROBLEM_TYPES, RemoteProblem

    kinds = {cls.kind for cls in all_error_classes() if cls is not RemoteProblem}
    assert kinds <= set(PROBLEM_TYPES), kinds - set(PROBLEM_TYPES)


def front_door_types() -> list[str]:
    pages = sorted((ROOT / "deploy" / "nginx" / "problems").glob("*.json"))
    assert pages
    return [json.loads(p.read_text())["type"] for p in pages]


def test_every_type_the_service_answers_with_resolves_to_its_own_page(client: Any) -> None:
    from tapecore.errors import PROBLEM_TYPES

    types = {f"/problems/{kind}" for kind in PROBLEM_TYPES} | set(front_door_types())
    types |= {"/problems/redis-unavailable", "/problems/server-busy", "/problems/too-many-requests"}
    for uri in sorted(types):
        assert uri.startswith("/problems/"), uri  # a reference on this service, not another domain
        page = client.get(uri)
        assert page.status_code == 200 and page.mimetype == "text/html", uri
        text = page.get_data(as_text=True)
        assert "What it means" in text and "What to do" in text, uri


def test_a_problem_answer_names_the_page_that_describes_it(client: Any) -> None:
    answer = client.post("/v1/gradients", json={"tensors": {}, "sources": ["x"], "expression": "x"})
    assert answer.status_code == 422
    kind = answer.get_json()["type"]
    assert kind == "/problems/invalid-graph"
    page = client.get(kind).get_data(as_text=True)
    assert "The graph is not valid" in page and "422" in page


def test_an_unknown_problem_type_is_a_404_problem(client: Any) -> None:
    answer = client.get("/problems/no-such-kind")
    assert answer.status_code == 404 and answer.mimetype == "application/problem+json"
    assert answer.get_json()["type"] == "/problems/not-found"
    assert "no-such-kind" in answer.get_json()["detail"]


def test_problem_pages_are_public_when_keys_are_required(redis_server: Any, redis: Any) -> None:
    from service import create_app

    app = create_app({"TESTING": True, "REDIS_URL": redis_server.url, "API_KEYS": "k1"})
    client = app.test_client()
    assert client.get("/problems/unauthorized").status_code == 200
    assert client.post("/v1/gradients", json=EXAMPLE_1).status_code == 401


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/gradients", {**EXAMPLE_1, "device": "gpu"}), ("/v1/batches", {"graphs": [EXAMPLE_1], "device": "gpu"})],
    ids=["gradients", "batches"],
)
def test_no_worker_is_a_503_domain_problem_pointing_at_the_device(
    client: Any, worker: Any, redis: Any, path: str, body: Any
) -> None:
    from tapecore.errors import NoWorker, TapeserveError

    assert issubclass(NoWorker, TapeserveError) and NoWorker.status == 503
    worker.register("cpu")
    answer = client.post(path, json=body)
    assert answer.status_code == 503 and answer.mimetype == "application/problem+json"
    assert answer.headers["Retry-After"] == "5"
    problem = answer.get_json()
    assert problem["type"] == "/problems/no-worker" and problem["title"] == "No worker serves this device"
    assert problem["detail"] == "no live worker serves the 'gpu' pool; the job was not queued"
    assert problem["errors"] == [{"path": "/device", "message": "no live worker serves the 'gpu' pool"}]
    assert not redis.keys("rq:job:*")
