"""`GET` and `DELETE /v1/jobs/{id}`: read (long-polling with `Prefer: wait=N`) and cancel."""

from __future__ import annotations

import re

from flask import Blueprint, Response, current_app, g, request
from flask.typing import ResponseReturnValue
from rq.job import Job
from werkzeug.exceptions import NotFound

from tapecore.protocol import OWNER_META

from ..jobview import job_document, status_of
from ..prefer import parse_prefer
from ..state import services

bp = Blueprint("jobs", __name__)
JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def owned_job(job_id: str) -> Job:
    """Return the job if it exists and belongs to the caller; otherwise 404 (ids leak nothing)."""
    # Ids this service makes are UUIDs; anything else cannot name a job (and RQ refuses some).
    job = services().jobs.fetch(job_id) if JOB_ID_RE.match(job_id) else None
    if job is None or job.meta.get(OWNER_META, "") != g.get("owner", ""):
        raise NotFound(f"no job {job_id[:64]}: unknown, expired, or not yours")
    return job


@bp.get("/v1/jobs/<job_id>")
def get_job(job_id: str) -> ResponseReturnValue:
    """Answer with the job: its status, and its result or error once it has ended."""
    svc = services()
    job = owned_job(job_id)
    prefs = parse_prefer(request.headers)
    headers = {}
    if prefs.wait is not None:
        wait = min(prefs.wait, float(current_app.config["MAX_WAIT_S"]))
        with svc.waits.held() as parked:
            if parked:  # else every wait slot is taken: answer with the job as it stands
                headers["Preference-Applied"] = f"wait={wait:g}"
                if status_of(job) in ("queued", "started") and svc.jobs.wait(job_id, wait):
                    job = owned_job(job_id)
    return job_document(job, svc.jobs), 200, headers


@bp.delete("/v1/jobs/<job_id>")
def delete_job(job_id: str) -> ResponseReturnValue:
    """Cancel a queued job, stop a running one, or delete a finished one."""
    services().jobs.cancel(owned_job(job_id))
    return Response(status=204)
