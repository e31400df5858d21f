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

from rq import get_current_job
from rq.job import Job
from rq.timeouts import JobTimeoutException

from worker.graph.errors import FieldError, GraphError, TapeserveError, TimeLimitExceeded
from worker.graph.limits import DEFAULT_LIMITS
from worker.protocol import PROBLEM_META, REQUEST_ID_META
from worker.runner import InProcessRunner, Runner

log = logging.getLogger("tapeserve.jobs")

_runner: Runner | None = None


def install_runner(runner: Runner | None) -> None:
    """Use this runner for the jobs of this process (the worker installs its TF process)."""
    global _runner
    _runner = runner


def current_runner() -> Runner:
    """Return the installed runner; without one, run in process (tests drive RQ this way)."""
    global _runner
    if _runner is None:
        _runner = InProcessRunner(DEFAULT_LIMITS)
    return _runner


def run_graph(doc: Any) -> dict[str, Any]:
    """Run one request document and return its result document."""
    job = get_current_job()
    started = time.perf_counter()
    outcome = "ok"
    try:
        return current_runner().run(doc)
    except TapeserveError as exc:
        outcome = exc.kind
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
        ms = (time.perf_counter() - started) * 1000
        log.info(
            "job %s request=%s mode=%s ops=%s ms=%.1f device=%s outcome=%s",
            job.id if job else "-",
            job.meta.get(REQUEST_ID_META, "-") if job else "-",
            doc.get("mode", "gradient") if isinstance(doc, dict) else "?",
            len(doc.get("ops", [])) if isinstance(doc, dict) and isinstance(doc.get("ops"), list) else "expr",
            ms,
            current_runner().device,
            outcome,
        )


def _keep_problem(job: Job | None, exc: TapeserveError) -> None:
    """Keep the problem in the job's meta, where the API reads it."""
    if job is not None:
        job.meta[PROBLEM_META] = exc.problem()
        job.save_meta()


def run_batch(items: Any) -> dict[str, Any]:
    """Run many graphs as one job: a result or a problem for each, in order.

    Each item is `{"graph": doc}`, or `{"problem": ...}` for a graph the API already refused.
    """
    if not isinstance(items, list):
        raise GraphError(FieldError("/graphs", "must be a list of request documents"))
    runner = current_runner()
    results: list[dict[str, Any]] = []
    for item in items:
        if "problem" in item:
            results.append({"status": "failed", "error": item["problem"]})
            continue
        try:
            results.append({"status": "finished", "result": runner.run(item["graph"])})
        except TapeserveError as exc:
            results.append({"status": "failed", "error": exc.problem()})
    return {"results": results}
