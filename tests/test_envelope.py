"""One validator for the request envelope (tapecore.request), for one graph and for a batch."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from tests.examples import EXAMPLE_1


def errors_of(response: Any) -> dict[str, str]:
    assert response.status_code == 422 and response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["type"] == "/problems/invalid-graph"
    return {e["path"]: e["message"] for e in problem["errors"]}


def test_every_envelope_fault_is_reported_at_once_by_the_graph_validator(client: Any) -> None:
    body = {"bogus": 1, "mode": "sideways", "order": 0, "device": "tpu", "expression": "x"}
    errors = errors_of(client.post("/v1/gradients", json=body))
    assert errors["/bogus"].startswith("unknown field; the request has device, encoding, expression")
    assert errors["/mode"] == "must be one of gradient, jacobian, batch_jacobian, hessian, jvp, not 'sideways'"
    assert errors["/order"] == "must be an integer of at least 1, not 0"
    assert errors["/device"] == "must be one of any, cpu, gpu, not 'tpu'"
    assert errors["/tensors"] == "is required: an object of name -> tensor"
    assert errors["/sources"] == "must be a non-empty list of tensor names"


def test_a_fault_met_twice_is_said_once(client: Any) -> None:
    problem = client.post("/v1/gradients", json={"expression": "x * x", "sources": ["x"]}).get_json()
    messages = [(e["path"], e["message"]) for e in problem["errors"]]
    assert len(messages) == len(set(messages)), messages
    assert ("/expression", "unknown name 'x': not a tensor or an op id") in messages


def test_the_batch_envelope_is_checked_with_pointers(client: Any) -> None:
    errors = errors_of(client.post("/v1/batches", json={"graphs": [], "device": "tpu", "extra": True}))
    assert errors == {
        "/extra": "unknown field; a batch has device, graphs",
        "/graphs": "must be a non-empty list of graphs, not []",
        "/device": "must be one of any, cpu, gpu, not 'tpu'",
    }
    assert errors_of(client.post("/v1/batches", json={}))["/graphs"] == "is required: a non-empty list of graphs"
    nulls = errors_of(client.post("/v1/batches", json={"graphs": [{}, None, 3, None]}))
    assert nulls == {p: "must be a graph (an object), not null" for p in ("/graphs/1", "/graphs/3")}
    assert errors_of(client.post("/v1/batches", json=[EXAMPLE_1]))[""] == "the request must be a JSON object"


def test_the_api_does_not_load_marshmallow() -> None:
    code = "import sys, service; service.create_app({'TESTING': True}); print('marshmallow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
