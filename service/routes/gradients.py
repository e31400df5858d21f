"""`POST /v1/gradients` and `POST /v1/batches`: validate, enqueue, wait, answer."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Blueprint, current_app, g, request, url_for
from flask.typing import ResponseReturnValue
from rq.job import Job

from tapecore.cost import human_bytes
from tapecore.errors import FieldError, LimitExceeded, NoWorker, TapeserveError
from tapecore.parsecache import REQUESTS
from tapecore.protocol import BATCH_FUNCTION, JOB_FUNCTION, OWNER_META, REQUEST_ID_META
from tapecore.request import parse_batch
from tapecore.tensors import TensorSpec, packed

from ..body import read_json
from ..jobview import finished_document, iso, job_document
from ..prefer import Preferences, parse_prefer
from ..problems import problem_from_document, problem_response
from ..state import services

bp = Blueprint("gradients", __name__)

# Below this many elements a `value` tensor goes to the worker as the client wrote it: packing
# costs the API about what it saves the worker (docs/performance.md has the figures).
PACK_MIN_ELEMENTS = 16_384


@bp.post("/v1/gradients")
def post_gradients() -> ResponseReturnValue:
    """Check a graph, queue it, and answer with its result or a job to poll."""
    svc = services()
    doc, body = read_json(request, svc.limits.max_body_bytes, svc.limits.max_json_depth)
    parsed = REQUESTS.parse(doc, svc.registry, svc.limits)
    for_worker = packed_tensors(doc, parsed.tensors)
    return submit(JOB_FUNCTION, body if for_worker is None else orjson.dumps(for_worker), parsed.device)


@bp.post("/v1/batches")
def post_batch() -> ResponseReturnValue:
    """Check many graphs and run them as one job; answer with a result or problem for each."""
    svc = services()
    doc, _ = read_json(request, svc.limits.max_body_bytes, svc.limits.max_json_depth)
    graphs, device = parse_batch(doc)
    limits = svc.limits
    check_batch(len(graphs), "max_batch_graphs", limits.max_batch_graphs, f"{len(graphs)} graphs")
    # The ops written out are counted before any graph is checked, so an oversized batch
    # costs a pass over lengths; an expression's ops are counted as it is parsed.
    ops = sum(len(g["ops"]) for g in graphs if isinstance(g, dict) and isinstance(g.get("ops"), list))
    check_batch(ops, "max_batch_ops", limits.max_batch_ops, f"at least {ops} ops in all graphs together")
    # An invalid graph does not sink the batch: its slot carries its problem to the answer.
    items: list[dict[str, Any]] = []
    ops = result_bytes = 0
    for graph in graphs:
        try:
            parsed = REQUESTS.parse(graph, svc.registry, limits)
        except TapeserveError as exc:
            items.append({"problem": exc.problem()})
            continue
        ops += len(parsed.nodes)
        check_batch(ops, "max_batch_ops", limits.max_batch_ops, f"at least {ops} ops in all graphs together")
        # Each graph's result is within the limit; the batch answers with all of them at once.
        result_bytes += parsed.cost.result_bytes if parsed.cost is not None else 0
        what = f"the results of all graphs together would take up to {human_bytes(result_bytes)}"
        check_batch(result_bytes, "max_result_bytes", limits.max_result_bytes, what)
        items.append({"graph": packed_tensors(graph, parsed.tensors) or graph})
    return submit(BATCH_FUNCTION, orjson.dumps(items), device)


def check_batch(estimate: int, limit: str, maximum: int, what: str) -> None:
    """Refuse the whole batch (a 422 at /graphs) if `estimate` is over the limit named `limit`."""
    if estimate > maximum:
        message = f"{what}, over the limit {limit} = {maximum}"
        raise LimitExceeded(FieldError("/graphs", message, limit=limit, maximum=maximum, estimate=estimate))


def packed_tensors(doc: dict[str, Any], tensors: dict[str, TensorSpec]) -> dict[str, Any] | None:
    """Return the checked document with its big `value` tensors as `b64`, or None if none is big.

    The worker then reads raw bytes, not JSON numbers: a quarter of the payload and of the
    worker's parse, for less packing here than it saves there (docs/performance.md).
    """
    packs = {name: p for name, spec in tensors.items() if spec.size >= PACK_MIN_ELEMENTS and (p := packed(spec))}
    if not packs:
        return None
    return {**doc, "tensors": {name: packs.get(name, t) for name, t in doc["tensors"].items()}}


def submit(function: str, payload: bytes, device: str) -> ResponseReturnValue:
    """Enqueue a job and wait as the client prefers: 200 with the outcome, or 202."""
    svc = services()
    if not svc.jobs.has_worker(device):
        raise NoWorker(device)
    meta = {REQUEST_ID_META: g.get("request_id", ""), OWNER_META: g.get("owner", "")}
    job = svc.jobs.enqueue(function, payload, device=device, meta=meta)
    return answer(job, parse_prefer(request.headers), current_app.config["DEFAULT_WAIT_S"])


def answer(queued: Job, prefs: Preferences, default_wait: float) -> ResponseReturnValue:
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
    location = url_for("jobs.get_job", job_id=queued.id)
    outcome = None
    if wait > 0:
        with svc.waits.held() as parked:
            if parked:
                outcome = svc.jobs.wait(queued.id, wait)
            else:  # every wait slot is taken: answer now, and do not claim the wait was applied
                applied = [a for a in applied if not a.startswith("wait=")]
    headers = {"Location": location}
    if applied:
        headers["Preference-Applied"] = ", ".join(applied)
    if outcome is None:
        # Not ended within the wait: say so from what enqueueing returned, without a read.
        return {"id": queued.id, "status": "queued", "created_at": _created(queued)}, 202, headers
    finished = finished_document(queued, outcome)
    if finished is not None:
        return finished, 200, headers
    job = svc.jobs.fetch(queued.id)
    if job is None:  # deleted by another request meanwhile
        return problem_response(404, "not-found", "Not Found", f"job {queued.id} no longer exists")
    doc = job_document(job, svc.jobs)
    if doc["status"] in ("failed", "canceled"):
        problem = dict(doc["error"])
        problem["job_id"] = queued.id
        problem["instance"] = location
        return problem_from_document(problem, headers=headers)
    return doc, 200 if doc["status"] == "finished" else 202, headers


def _created(job: Job) -> str | None:
    return iso(job.created_at) if job.created_at is not None else None
