"""Jobs on RQ: enqueue by dotted path, wait on the result stream, read, cancel, delete."""

from __future__ import annotations

import base64
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from redis import Redis
from rq import Queue, Worker
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.results import Result
from rq.worker_registration import clean_worker_registry

from tapecore.errors import problem_type
from tapecore.protocol import DEVICES, POOLS, PROBLEM_META, OrjsonSerializer, payload_key, queue_name

SUCCESSFUL = str(Result.Type.SUCCESSFUL.value).encode()
# A pool without a worker is counted again after this long, not after worker_check_s: a worker
# that has just started is served at once (a few Redis reads at most ten times a second).
NO_WORKER_RECHECK_S = 0.1
PAYLOAD_MARGIN_S = 60  # a stored request outlives its job's queue TTL and time limit by this

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
LOST_PROBLEM = {
    "type": problem_type("worker-lost"),
    "title": "The worker running this job was lost",
    "status": 422,
    "detail": "the job did not finish: its worker stopped (killed, or its host lost) while running it",
    "errors": [],
}
CANCELED_PROBLEM = {
    "type": problem_type("job-canceled"),
    "title": "The job was canceled",
    "status": 409,
    "detail": "the job was canceled before it finished",
    "errors": [],
}


class JobQueue:
    """The API's view of RQ: one queue per device pool plus `any`."""

    def __init__(
        self,
        connection: Redis,
        *,
        result_ttl: int,
        failure_ttl: int,
        queued_ttl: int,
        job_timeout: float,
        worker_check_s: float,
    ):
        self.connection = connection
        self.queues = {d: Queue(queue_name(d), connection=connection, serializer=OrjsonSerializer) for d in DEVICES}
        self.result_ttl = result_ttl
        self.failure_ttl = failure_ttl
        self.queued_ttl = queued_ttl
        self.job_timeout = job_timeout
        self.worker_check_s = worker_check_s
        self._workers: dict[str, int] = {}
        self._workers_at = 0.0

    def workers(self, max_age_s: float | None = None) -> dict[str, int]:
        """Count live workers per pool (reused for `worker_check_s` or `max_age_s`; dead ones are cleaned out)."""
        now = time.monotonic()
        if now - self._workers_at > (self.worker_check_s if max_age_s is None else max_age_s):
            counts = {}
            for pool in POOLS:
                queue = self.queues[pool]
                clean_worker_registry(queue)
                counts[pool] = Worker.count(queue=queue)
            self._workers, self._workers_at = counts, now
        return self._workers

    def has_worker(self, device: str) -> bool:
        """Whether a live worker serves the pool; a "no" is checked again soon (a worker may just have started)."""

        def serves(counts: dict[str, int]) -> bool:
            return sum(counts.values()) > 0 if device == "any" else counts.get(device, 0) > 0

        return serves(self.workers()) or serves(self.workers(max_age_s=NO_WORKER_RECHECK_S))

    def enqueue(self, function: str, payload: bytes, *, device: str, meta: dict[str, Any]) -> Job:
        """Store the request and queue its job, under an unguessable id, in one round trip."""
        job_id = str(uuid.uuid4())
        key = payload_key(job_id)
        with self.connection.pipeline() as pipe:
            pipe.multi()  # RQ adds its commands to this transaction
            # The request outlives the job's time in the queue and its run, then expires.
            pipe.set(key, payload, ex=self.queued_ttl + int(self.job_timeout) + PAYLOAD_MARGIN_S)
            job = self.queues[device].enqueue_call(
                function,
                args=(key,),
                job_id=job_id,
                description=function.rsplit(".", 1)[-1],  # RQ's default is repr(args)
                result_ttl=self.result_ttl,
                failure_ttl=self.failure_ttl,
                ttl=self.queued_ttl,
                timeout=int(self.job_timeout),
                meta=meta,
                pipeline=pipe,
            )
            pipe.execute()
        return job

    def fetch(self, job_id: str) -> Job | None:
        try:
            return Job.fetch(job_id, connection=self.connection, serializer=OrjsonSerializer)
        except NoSuchJobError:
            return None

    def wait(self, job_id: str, timeout_s: float) -> dict[bytes, bytes] | None:
        """Block on the job's result stream (XREAD) for up to `timeout_s`; return its entry, if any."""
        if timeout_s <= 0:
            return None
        block_ms = max(1, int(timeout_s * 1000))
        answer: Any = self.connection.xread({Result.get_key(job_id): "0-0"}, count=1, block=block_ms)
        if not answer:
            return None
        entries = answer[0][1]
        return dict(entries[-1][1]) if entries else None

    def finished_document(self, job: Job, entry: dict[bytes, bytes]) -> dict[str, Any] | None:
        """The document of a job that just succeeded, from its result entry alone (no more reads)."""
        if entry.get(b"type") != SUCCESSFUL or b"return_value" not in entry:
            return None
        doc: dict[str, Any] = {"id": job.id, "status": "finished"}
        if job.created_at is not None:
            doc["created_at"] = iso(job.created_at)
        for key, field in (("started_at", b"execution_started_at"), ("ended_at", b"execution_ended_at")):
            if field in entry:
                doc[key] = iso(datetime.fromtimestamp(float(entry[field]), UTC))
        doc["result"] = orjson.Fragment(base64.b64decode(entry[b"return_value"]))
        return doc

    def document(self, job: Job) -> dict[str, Any]:
        """The job as the API shows it: id, status, and result or error."""
        status = STATUS.get(job.get_status(refresh=False) or JobStatus.QUEUED, "queued")
        doc: dict[str, Any] = {"id": job.id, "status": status}
        for key, value in (
            ("created_at", job.created_at),
            ("started_at", job.started_at),
            ("ended_at", job.ended_at),
        ):
            if value is not None:
                doc[key] = iso(value)
        if status == "finished":
            doc["result"] = self.raw_result(job.id)
        elif status == "failed":
            doc["error"] = job.meta.get(PROBLEM_META) or LOST_PROBLEM
        elif status == "canceled":
            doc["error"] = CANCELED_PROBLEM
        return doc

    def raw_result(self, job_id: str) -> orjson.Fragment | None:
        """Return the job's result as the JSON the worker wrote, to be spliced into the answer.

        Reading the stream entry directly (not RQ's Result, which parses it) keeps a 1M-float
        result from being parsed and written again here: ~190 ms saved on this machine.
        """
        entries = self.connection.xrevrange(Result.get_key(job_id), "+", "-", count=1)
        if not entries:
            return None
        fields = entries[0][1] or {}
        if fields.get(b"type") != SUCCESSFUL or b"return_value" not in fields:
            return None
        return orjson.Fragment(base64.b64decode(fields[b"return_value"]))  # type: ignore[arg-type]

    def cancel(self, job: Job) -> None:
        """Cancel a queued job, stop a running one, delete a finished one."""
        status = job.get_status()
        if status == JobStatus.STARTED:
            try:
                send_stop_job_command(self.connection, job.id, serializer=OrjsonSerializer)
            except InvalidJobOperation:
                pass  # it finished in the meantime
        elif status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
            job.cancel()
            self.connection.unlink(payload_key(job.id))
        else:
            job.delete()


def iso(moment: datetime) -> str:
    """Write a moment as RFC 3339 in UTC with a Z."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat().replace("+00:00", "Z")
