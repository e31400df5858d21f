"""The RQ job functions, run in the (TensorFlow-free) worker process.

RQ calls these by dotted path. They hand the document to the runner installed by the worker
(a TensorFlow process it can kill), log one line per job, and on failure keep the problem
document in the job's meta before raising, so that RQ records the failure and the API can
answer with the problem.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
import redis.exceptions
from rq import get_current_job
from rq.job import Job
from rq.timeouts import JobTimeoutException

from tapecore.errors import FieldError, GraphError, InternalError, TapeserveError, TimeLimitExceeded
from tapecore.protocol import BATCH_FUNCTION, JOB_FUNCTION, PROBLEM_META, REQUEST_ID_META
from worker import metrics
from worker.runner import Runner

log = logging.getLogger("tapeserve.jobs")

TASK_KINDS = {JOB_FUNCTION: "graph", BATCH_FUNCTION: "batch"}  # what each job function hands the runner
CHECK_VALUES = False  # the API checked every value of the requests it queues

_runner: Runner | None = None
# The JSON bytes of the last result this process returned: the worker keeps big ones shorter.
last_result_bytes = 0
# The job whose problem is in its meta but not yet in Redis (Redis refused it): the worker
# writes it with the job's failure.
_unsaved_problem: set[str] = set()


def install_runner(runner: Runner | None) -> None:
    """Use this runner for the jobs of this process (the worker installs its TF process)."""
    global _runner
    _runner = runner


def current_runner() -> Runner:
    """Return the installed runner; a process without one cannot run jobs."""
    if _runner is None:
        raise RuntimeError("no runner installed: call worker.jobs.install_runner first (python -m worker does)")
    return _runner


def run_graph(payload_key: str) -> orjson.Fragment:
    """Run the request document stored under `payload_key`; return its result as JSON."""
    return _run(TASK_KINDS[JOB_FUNCTION], payload_key)


def run_batch(payload_key: str) -> orjson.Fragment:
    """Run the batch stored under `payload_key`: a result or a problem for each graph, in order."""
    return _run(TASK_KINDS[BATCH_FUNCTION], payload_key)


def _run(kind: str, payload_key: str) -> orjson.Fragment:
    global last_result_bytes
    job = get_current_job()
    runner = current_runner()
    last_result_bytes = 0
    started = time.perf_counter()
    outcome = "ok"
    info: dict[str, Any] = {}
    try:
        payload = _take_payload(job, payload_key)
        out, info = runner.run(kind, payload, check_values=CHECK_VALUES)
        last_result_bytes = len(out)
        # A Fragment is written into RQ's result as it is: the API splices it into its answer.
        return orjson.Fragment(out)
    except TapeserveError as exc:
        outcome = exc.kind
        info = info or getattr(runner, "last_info", {})
        _keep_problem(job, exc)
        raise
    except JobTimeoutException:
        # RQ's own job timeout, a backstop that fires only when the worker's time limit is set
        # at or above the API's job timeout: still a time-out to the client, not a lost worker.
        timeout = job.timeout if job is not None else "?"
        timed_out = TimeLimitExceeded(FieldError("", f"the job ran past its queue timeout of {timeout} s"))
        outcome = timed_out.kind
        _keep_problem(job, timed_out)
        raise
    finally:
        seconds = time.perf_counter() - started
        mode = str(info.get("mode", kind))
        metrics.record_job(mode, outcome, seconds, info)
        log.info(
            "job %s request=%s mode=%s ops=%s ms=%.1f device=%s outcome=%s",
            job.id if job else "-",
            job.meta.get(REQUEST_ID_META, "-") if job else "-",
            mode,
            info.get("ops", "?"),
            seconds * 1000,
            runner.device,
            outcome,
        )


def _take_payload(job: Job | None, key: str) -> bytes:
    """Take the stored request: as the worker fetched it with the job, else read and deleted in one round trip."""
    if job is None:
        raise InternalError([], detail="internal error: no current job")
    payload = getattr(job, "fetched_payload", None)
    if payload is None:
        with job.connection.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.unlink(key)
            payload, _ = pipe.execute()
    if payload is None:
        raise GraphError(FieldError("", "the request expired before a worker could take it; send it again"))
    return bytes(payload)


def _keep_problem(job: Job | None, exc: TapeserveError) -> None:
    """Keep the problem in the job's meta, where the API reads it (written with the failure if Redis refuses it now)."""
    if job is None:
        return
    job.meta[PROBLEM_META] = exc.problem()
    try:
        job.save_meta()
    except redis.exceptions.RedisError as refused:
        log.warning("job %s: its problem waits for its failure to be written (%s)", job.id, refused)
        mark_unsaved_problem(job.id)


def mark_unsaved_problem(job_id: str) -> None:
    """Note that this job's meta holds a problem Redis has not taken yet."""
    _unsaved_problem.clear()  # one job at a time: an older entry is stale
    _unsaved_problem.add(job_id)


def take_unsaved_problem(job_id: str) -> bool:
    """Whether this job's problem is still to be written (and forget it)."""
    if job_id in _unsaved_problem:
        _unsaved_problem.discard(job_id)
        return True
    return False
