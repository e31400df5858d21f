"""The job: RQ's `Job`, run without a round trip of its own.

This replaces `rq.job.Job.perform` (RQ 2.12; the series is checked in worker/tapeworker.py)
and relies on its internals `_job_stack` and `Job._execute`: RQ's `perform` sends PERSIST in a
round trip of its own, then pushes the job on `_job_stack` (what `get_current_job()` reads)
and calls `_execute`. The worker sends that PERSIST with the job's start, so `perform` does
the rest.
"""

from __future__ import annotations

from typing import Any

from rq.job import Job, _job_stack


class TapeJob(Job):
    """An RQ job whose key the worker made persistent in its start transaction."""

    persisted = False

    def perform(self) -> Any:
        if not self.persisted:
            return super().perform()
        _job_stack.push(self)  # what get_current_job() reads, as in RQ's perform
        try:
            self._result = self._execute()
        finally:
            _job_stack.pop()
        return self._result
