"""The job: RQ's `Job`, fetched with its request and run without a round trip of its own.

This replaces `rq.job.Job.fetch` and `rq.job.Job.perform` (RQ 2.12; the series is checked in
worker/tapeworker.py) and relies on `Job.restore`, `_job_stack` and `Job._execute`:

- `fetch` reads the job's hash and, in the same round trip, the request it runs on (which the
  worker deletes with the job's start), so the job does not read it in a round trip of its own.
- RQ's `perform` sends PERSIST in a round trip of its own, then pushes the job on `_job_stack`
  (what `get_current_job()` reads) and calls `_execute`. The worker sends that PERSIST with the
  job's start, so `perform` does the rest.
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, _job_stack

from tapecore.protocol import payload_key


class TapeJob(Job):
    """An RQ job whose key the worker made persistent in its start transaction."""

    persisted = False
    fetched_payload: bytes | None = None  # the request, read with the job (None: expired, or not ours)

    @classmethod
    def fetch(cls, id: str, connection: Redis | None = None, serializer: Any = None) -> TapeJob:
        """Read the job and, in the same round trip, the request it runs on."""
        job = cls(id, connection=connection, serializer=serializer)
        with job.connection.pipeline(transaction=False) as pipe:
            pipe.hgetall(job.key)
            pipe.get(payload_key(job.id))
            data, payload = pipe.execute()
        if not data:
            raise NoSuchJobError(f"No such job: {job.key}")
        job.restore(data)
        job.fetched_payload = payload
        return job

    def perform(self) -> Any:
        if not self.persisted:
            return super().perform()
        _job_stack.push(self)  # what get_current_job() reads, as in RQ's perform
        try:
            self._result = self._execute()
        finally:
            _job_stack.pop()
        return self._result
