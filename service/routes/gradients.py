"""`POST /v1/gradients` and `POST /v1/batches`: validate, enqueue, wait, answer."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Blueprint, Response, current_app, g, request, url_for

from worker.graph.errors import FieldError, LimitExceeded, TapeserveError
from worker.graph.parsecache import REQUESTS
from worker.protocol import BATCH_FUNCTION, JOB_FUNCTION, OWNER_META, REQUEST_ID_META

from ..body import read_json
from ..prefer import parse_prefer
from ..problems import problem_from_document, problem_response
from ..responses import json_response
from ..schemas import BATCH_SCHEMA, GRADIENT_SCHEMA, check_envelope
from ..state import services

bp = Blueprint("gradients", __name__)


@bp.post("/v1/gradients")
def post_gradients() -> Response:
    """Check a graph, queue it, and answer with its result or a job to poll."""
    svc = services()
    doc, body = read_json(request, svc.limits.max_body_bytes, svc.limits.max_json_depth)
    check_envelope(GRADIENT_SCHEMA, doc)
    parsed = REQUESTS.parse(doc, svc.registry, svc.limits)
    return submit(JOB_FUNCTION, body, parsed.device)


@bp.post("/v1/batches")
def post_batch() -> Response:
    """Check many graphs and run them as one job; answer with a result or problem for each."""
    svc = services()
    doc, _ = read_json(request, svc.limits.max_body_bytes, svc.limits.max_json_depth)
    check_envelope(BATCH_SCHEMA, doc)
    graphs = doc["graphs"]
    if len(graphs) > svc.limits.max_batch_graphs:
        raise LimitExceeded(
            FieldError(
                "/graphs",
                f"{len(graphs)} graphs is over the limit max_batch_graphs = {svc.limits.max_batch_graphs}",
            )
        )
    # An invalid graph does not sink the batch: its slot carries its problem to the answer.
    items: list[dict[str, Any]] = []
    for graph in graphs:
        try:
            check_envelope(GRADIENT_SCHEMA, graph)
            REQUESTS.parse(graph, svc.registry, svc.limits)
            items.append({"graph": graph})
        except TapeserveError as exc:
            items.append({"problem": exc.problem()})
    return submit(BATCH_FUNCTION, orjson.dumps(items), doc.get("device", "any"))


def submit(function: str, payload: bytes, device: str) -> Response:
    """Enqueue a job and wait as the client prefers: 200 with the outcome, or 202."""
    svc = services()
    if not svc.jobs.has_worker(device):
        retry = str(current_app.config["RETRY_AFTER_S"])
        return problem_response(
            503,
            "no-worker",
            "No worker serves this device",
            f"no live worker serves the '{device}' pool; the job was not queued",
            headers={"Retry-After": retry},
        )
    meta = {REQUEST_ID_META: g.get("request_id", ""), OWNER_META: g.get("owner", "")}
    job = svc.jobs.enqueue(function, payload, device=device, meta=meta)
    return answer(job.id, parse_prefer(request.headers), current_app.config["DEFAULT_WAIT_S"])


def answer(job_id: str, prefs: Any, default_wait: float) -> Response:
    """Wait for the job as preferred; answer with its result, its problem, or 202."""
    svc = services()
    applied: list[str] = []
    if prefs.respond_async:
        wait = 0.0
        applied.append("respond-async")
    elif prefs.wait is not None:
        wait = min(prefs.wait, float(current_app.config["MAX_WAIT_S"]))
        applied.append(f"wait={wait:g}")
    else:
        wait = default_wait
    done = svc.jobs.wait(job_id, wait) if wait > 0 else False
    job = svc.jobs.fetch(job_id)
    location = url_for("jobs.get_job", job_id=job_id)
    headers = {"Location": location}
    if applied:
        headers["Preference-Applied"] = ", ".join(applied)
    if job is None:  # deleted by another request meanwhile
        return problem_response(404, "not-found", "Not Found", f"job {job_id} no longer exists")
    doc = svc.jobs.document(job)
    if done and doc["status"] in ("failed", "canceled"):
        problem = dict(doc["error"])
        problem["job_id"] = job_id
        problem["instance"] = location
        return problem_from_document(problem, headers=headers)
    if doc["status"] == "finished":
        return json_response(doc, 200, headers)
    return json_response(doc, 202, headers)
