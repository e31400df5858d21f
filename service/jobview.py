"""A job as the API shows it: its status in the contract's words, and its result or problem."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rq.job import Job, JobStatus
from rq.results import Result

from tapecore.errors import JobStopped, WorkerLost
from tapecore.protocol import PROBLEM_META

from .jobqueue import JobQueue

# RQ's statuses, as the contract names them.
STATUS = {
    JobStatus.QUEUED: "queued",
    JobStatus.DEFERRED: "queued",
    JobStatus.SCHEDULED: "queued",
    JobStatus.STARTED: "started",
    JobStatus.FINISHED: "finished",
    JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "canceled",
    JobStatus.CANCELED: "canceled",
}
LOST_PROBLEM = WorkerLost().problem()
CANCELED_PROBLEM = JobStopped([], "the job was canceled before it finished").problem()


def status_of(job: Job) -> str:
    """The job's status as the contract names it."""
    return STATUS.get(job.get_status(refresh=False) or JobStatus.QUEUED, "queued")


def job_document(job: Job, jobs: JobQueue) -> dict[str, Any]:
    """The job as the API shows it: id, status, and result or error (its result read from `jobs`)."""
    status = status_of(job)
    doc: dict[str, Any] = {"id": job.id, "status": status}
    for key, value in (
        ("created_at", job.created_at),
        ("started_at", job.started_at),
        ("ended_at", job.ended_at),
    ):
        if value is not None:
            doc[key] = iso(value)
    if status == "finished":
        result = jobs.latest_result(job)
        doc["result"] = result.return_value if result is not None and succeeded(result) else None
    elif status == "failed":
        doc["error"] = job.meta.get(PROBLEM_META) or LOST_PROBLEM
    elif status == "canceled":
        doc["error"] = CANCELED_PROBLEM
    return doc


def finished_document(job: Job, result: Result) -> dict[str, Any] | None:
    """The document of a job that just succeeded, from its result alone (no more reads); None otherwise."""
    if not succeeded(result):
        return None
    doc: dict[str, Any] = {"id": job.id, "status": "finished"}
    if job.created_at is not None:
        doc["created_at"] = iso(job.created_at)
    for key, moment in (("started_at", result.execution_started_at), ("ended_at", result.execution_ended_at)):
        if moment is not None:
            doc[key] = iso(moment)
    doc["result"] = result.return_value
    return doc


def succeeded(result: Result) -> bool:
    """Whether the result is a success with a value (the worker's JSON, unparsed)."""
    return result.type == Result.Type.SUCCESSFUL and result.return_value is not None


def iso(moment: datetime) -> str:
    """Write a moment as RFC 3339 in UTC with a Z."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat().replace("+00:00", "Z")
