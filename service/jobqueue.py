"""The API's RQ adapter: enqueue by dotted path, wait for and read a job's outcome, cancel, delete.

A job's outcome is read through RQ's public `Result` API only (`Result.restore`,
`Result.fetch_latest`), with a serializer that keeps the worker's JSON unparsed.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from redis import Redis
from rq import Queue, Worker
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.results import Result
from rq.worker_registration import clean_worker_registry

from tapecore.protocol import DEVICES, POOLS, OrjsonSerializer, payload_key, queue_name

# A pool without a worker is counted again after this long, not after worker_check_s: a worker
# that has just started is served at once (a few Redis reads at most ten times a second).
NO_WORKER_RECHECK_S = 0.1
PAYLOAD_MARGIN_S = 60  # a stored request outlives its job's queue TTL and time limit by this


class ResultJSON:
    """An RQ serializer that reads a result as the worker's JSON, unparsed, to be spliced into an answer.

    RQ's own (OrjsonSerializer) would parse a 1M-float result and the answer write it again:
    ~190 ms on this machine. A result is only read, never written, through this one.
    """

    @staticmethod
    def dumps(obj: Any) -> bytes:
        raise TypeError("ResultJSON only reads results")

    @staticmethod
    def loads(data: bytes | str) -> orjson.Fragment:
        return orjson.Fragment(data)


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

    def wait(self, job_id: str, timeout_s: float) -> Result | None:
        """Block until the job has an outcome, for up to `timeout_s`; return it, if any.

        RQ's `Result.fetch_latest(timeout=)` waits in whole seconds; this waits as RQ does
        (XREAD on the job's results), to the millisecond.
        """
        if timeout_s <= 0:
            return None
        block_ms = max(1, int(timeout_s * 1000))
        answer: Any = self.connection.xread({Result.get_key(job_id): "0-0"}, count=1, block=block_ms)
        if not answer or not answer[0][1]:
            return None
        result_id, fields = answer[0][1][-1]
        return Result.restore(job_id, result_id.decode(), fields, connection=self.connection, serializer=ResultJSON)

    def latest_result(self, job: Job) -> Result | None:
        """The job's latest outcome (its value the worker's JSON, unparsed), if it has one."""
        return Result.fetch_latest(job, serializer=ResultJSON)

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
