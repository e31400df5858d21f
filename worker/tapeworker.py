"""The worker: RQ's SimpleWorker, lean on Redis round trips, outliving its TF process and Redis restarts.

RQ's own worker is built for long jobs, where a dozen Redis round trips of bookkeeping per
job do not matter. Here a job often takes a millisecond, so the bookkeeping is the job: the
worker below keeps RQ's data model (statuses, registries, executions, results, heartbeats;
rq-dashboard, `rq info` and the API read them as RQ writes them) but writes it in fewer round
trips (docs/performance.md has the count).

This is a fork of parts of `rq.worker.SimpleWorker` / `BaseWorker` for the RQ series
RQ_SERIES, checked when a worker is made (`check_rq_version`). It overrides RQ's public
hooks (`execute_job`, `prepare_execution`, `prepare_job_execution`, `handle_execution_ended`,
`handle_job_success`, `handle_job_failure`, `heartbeat`, ...) and calls these internals:

- `Job._handle_success(result_ttl, pipeline=, worker_name=, execution_id=, execution_started_at=,
  execution_ended_at=)`: writes the job's status and result; its signature changed three
  times within RQ 2.x, which is why the series is pinned.
- `Worker._stop_requested`, `Worker._state`: whether SIGTERM came, and the state last written.
- `Execution.create(job, ttl, pipeline=, worker_name=)`: RQ's execution records, queued on
  the start transaction.

The job (`TapeJob`, worker/tapejob.py), the MULTI/EXEC the start and the outcome are written
in (worker/transaction.py) and the reconnect policy (worker/reconnect.py) have modules of
their own.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Callable
from typing import Any

import redis.exceptions
import rq
from redis.client import Pipeline
from rq import Queue, SimpleWorker, worker_registration
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.utils import now
from rq.worker import WorkerStatus

from tapecore.errors import ResultNotStored
from tapecore.protocol import PROBLEM_META, payload_key
from worker import jobs
from worker.reconnect import PRESSURE, REDIS_ERRORS, REDIS_RETRY_MAX_S, retry_redis, rewrite
from worker.runner import WAIT_SLICE_S, TensorFlowProcess
from worker.tapejob import TapeJob
from worker.transaction import SentTransaction, send_transaction

__all__ = ["TapeJob", "TapeWorker", "check_rq_version"]

log = logging.getLogger("tapeserve.worker")

# How a worker killed with SIGKILL (or its host lost) is noticed. RQ's defaults are built for
# long jobs: a running job's registry entry would outlive its dead worker by the job timeout
# plus 60 s, and an idle worker cleans registries every 10 minutes. Here a running job is
# heartbeaten every JOB_HEARTBEAT_S, so its entry can be short-lived, and every worker cleans
# often; the numbers below make the lost-job bound a few seconds.
WORKER_TTL_S = 20  # a worker silent this long is gone: its key expires and the API stops counting it
JOB_HEARTBEAT_S = WAIT_SLICE_S  # a running job's registry entry is refreshed this often (2 s)
JOB_HEARTBEAT_TTL_S = 8  # ...and expires this long after its last refresh: four missed beats
MAINTENANCE_INTERVAL_S = 3  # how often a worker moves abandoned (expired) jobs to failed
# A job whose worker dies reaches `failed` (the API shows "worker-lost") within this time:
# its entry expires at most JOB_HEARTBEAT_TTL_S after the death, and an idle worker of the same
# pool runs its next cleaning pass at most MAINTENANCE_INTERVAL_S later; 1 s for the pass itself
# and RQ's whole-second scores. Measured: 8 s for a worker killed 1 s into a job (asserted in
# tests/test_faults.py). If every surviving worker is busy, the pass runs when its current job
# ends (at most the time limit later); if none survives, when a worker of that pool starts.
LOST_JOB_BOUND_S = JOB_HEARTBEAT_TTL_S + MAINTENANCE_INTERVAL_S + 1
RESTART_BACKOFF_S = 2.0  # between restarts of a worker process that exited by itself
# RQ refreshes the worker's key several times per job and checks for `rq suspend` before each
# (docs/performance.md counts them), where once a second keeps the key (WORKER_TTL_S) just as
# alive and a suspension is noticed within the second.
HEARTBEAT_MIN_S = 1.0
SUSPENSION_CHECK_S = 1.0

# A result over BIG_RESULT_BYTES of JSON is kept BIG_RESULT_TTL_S, not the API's result TTL
# (an hour): a few clients fetching big results must not fill Redis for everyone.
BIG_RESULT_BYTES = 4 * 1024 * 1024  # 4 MiB: a 500x500 float32 gradient is ~2.5 MB of JSON
BIG_RESULT_TTL_S = 300  # 5 minutes: a client that polls finds it; one that waits gets it at once
STORE_FULL_PROBLEM = ResultNotStored().problem()


RQ_SERIES = "2.12"  # the RQ series this fork is written against (pyproject.toml pins it)


def check_rq_version(version: str | None = None) -> None:
    """Refuse to run on an RQ outside RQ_SERIES (default: the installed one): the fork calls its internals."""
    version = version or rq.__version__
    if version.split(".")[:2] != RQ_SERIES.split("."):
        raise RuntimeError(
            f"RQ {version} is installed, but worker/tapeworker.py is a fork of RQ {RQ_SERIES}.x "
            f"(it calls Job._handle_success, Job._execute, _job_stack): install rq>={RQ_SERIES},<2.13"
        )


class ResultRefused(Exception):
    """Redis was full when a job's result was written: the job fails with STORE_FULL_PROBLEM instead."""


class TapeWorker(SimpleWorker):
    """An RQ worker that runs jobs in-process and outlives its TF process and Redis restarts.

    It stops a job by killing the TensorFlow process, heartbeats during long jobs (so that a
    dead worker's job is noticed in seconds), and has a warm TF process before each dequeue.
    RQ's own loop retries only a failed dequeue; any other Redis error (while recording a job's
    outcome, cleaning registries, checking for suspension) ends `work()`. Here each of those
    waits for Redis instead and registers the worker again, since a restarted Redis without
    persistence has forgotten it.
    """

    max_connection_wait_time = REDIS_RETRY_MAX_S  # RQ's backoff around a failed dequeue

    def __init__(
        self,
        *args: Any,
        runner: TensorFlowProcess | None = None,
        big_result_bytes: int = BIG_RESULT_BYTES,
        big_result_ttl_s: int = BIG_RESULT_TTL_S,
        **kwargs: Any,
    ):
        check_rq_version()
        super().__init__(*args, **kwargs)
        self.runner = runner
        self.big_result_bytes = big_result_bytes
        self.big_result_ttl_s = big_result_ttl_s
        self._running_job: Job | None = None
        self._preparing: Pipeline | None = None  # prepare_execution's commands, sent with the job's preparation
        self._prepared: SentTransaction | None = None  # the running job's start, its replies unread
        self._suspension_checked = -math.inf  # time.monotonic() of the last check
        if runner is not None:
            runner.on_wait = self._keep_alive

    @property
    def dequeue_timeout(self) -> int:
        # An idle worker blocks on the queues this long, then heartbeats and, when due, cleans
        # registries; RQ's default (worker_ttl - 15 s) would delay that cleaning pass.
        return MAINTENANCE_INTERVAL_S

    def get_heartbeat_ttl(self, job: Job) -> int:
        # RQ's SimpleWorker keeps the entry for the job timeout + 60 s, since it cannot
        # heartbeat during a job; this one can (`_keep_alive`, called by the runner).
        return JOB_HEARTBEAT_TTL_S

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL) -> None:
        # RQ's stop-job command lands here; our "horse" is the TensorFlow process.
        if self.runner is not None:
            self.runner.kill()

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run the job; then, before the next one, have a warm TF process (after a crash, say)."""
        self._running_job = job
        try:
            super().execute_job(job, queue)
        except REDIS_ERRORS as exc:
            log.error("job %s: Redis went away before its outcome was recorded", job.id)
            self.wait_for_redis(exc)
        finally:
            self._running_job = None
            self._settle_prepared()
        if self.runner is not None and not self._stop_requested:
            self.runner.ensure_warm()

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        """Refresh this worker's registration for WORKER_TTL_S (RQ would add 60 s), in one round trip."""
        if pipeline is not None:
            super().heartbeat(self.worker_ttl, pipeline=pipeline)
            return
        if self.last_heartbeat is not None and (now() - self.last_heartbeat).total_seconds() < HEARTBEAT_MIN_S:
            return
        try:
            recreated = self._beat()
        except REDIS_ERRORS as exc:
            self.wait_for_redis(exc)
            return
        if recreated:
            log.warning("worker %s: its registration was gone (Redis restarted?); registering again", self.name)
            self._register_again()

    # The lean path of a job: the same keys, fields and registries as RQ's own worker writes,
    # in fewer round trips (the start is one transaction, its replies read after the job ran;
    # the outcome is one more). docs/performance.md has the count, for RQ's worker too;
    # tests/test_tapeworker.py holds both.

    def set_state(self, state: str, pipeline: Pipeline | None = None) -> None:
        """Write the worker's state, unless it is already what Redis holds (RQ writes `idle` twice a job)."""
        if pipeline is None and state == self._state:
            return
        super().set_state(state, pipeline=pipeline)

    def prepare_execution(self, job: Job) -> Execution:
        """Queue the execution's records; `prepare_job_execution` sends them with its own."""
        pipe = self.connection.pipeline()
        self.execution = Execution.create(job, self.get_heartbeat_ttl(job), pipeline=pipe, worker_name=self.name)
        self.set_state(WorkerStatus.BUSY, pipeline=pipe)
        self._preparing = pipe
        return self.execution

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        """Mark the job started and persist its key in one transaction, its replies read after the job.

        RQ sends the execution, the start and Job.perform's PERSIST in three round trips before
        the job runs. Nothing here is needed to run the job, so the transaction is written now
        and its replies are read when the job has run (`_await_prepared`), before its outcome
        is written: Redis sees RQ's order.
        """
        pipe, self._preparing = self._preparing or self.connection.pipeline(), None
        self.set_current_job_id(job.id, pipeline=pipe)
        self.set_current_job_working_time(0, pipeline=pipe)
        ttl = self.get_heartbeat_ttl(job)
        self.heartbeat(ttl, pipeline=pipe)
        job.heartbeat(now(), ttl, pipeline=pipe)
        job.prepare_for_execution(self.name, pipeline=pipe)
        if remove_from_intermediate_queue:
            pipe.lrem(Queue(job.origin, connection=self.connection).intermediate_queue_key, 1, job.id)
        pipe.persist(job.key)
        if isinstance(job, TapeJob):
            job.persisted = True
            if job.fetched_payload is not None:  # read with the job: a job runs once, so it goes now
                pipe.unlink(payload_key(job.id))
        with pipe:
            self._prepared = send_transaction(self.connection, pipe)

    def _await_prepared(self) -> None:
        """Read the running job's start replies; raise its error, if any."""
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            prepared.result()

    def _settle_prepared(self) -> None:
        """After a job, let a start still in flight land (a job that failed before its end left it)."""
        try:
            self._await_prepared()
        except REDIS_ERRORS as exc:  # the job's outcome met the same outage and waited for Redis
            log.warning("a job's start was not recorded (%s: %s)", type(exc).__name__, exc)

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        """Note the end; a success's last job heartbeat goes with its outcome, not alone.

        A Redis that refused the job's start or this heartbeat (full, read-only) still gets
        the job's outcome: it is written (and waited for) next.
        """
        try:
            self._await_prepared()
            if job.get_status(refresh=False) == JobStatus.FAILED:
                super().handle_execution_ended(job, queue, heartbeat_ttl)
                return
        except PRESSURE as exc:
            log.warning("job %s: its start or end was not recorded (%s: %s)", job.id, type(exc).__name__, exc)
        job.ended_at = now()

    def handle_job_failure(
        self, job: Job, queue: Queue, started_job_registry: StartedJobRegistry | None = None, exc_string: str = ""
    ) -> None:
        """Record the failure as RQ does; wait out a full, read-only or loading Redis and write it again.

        The job's problem (its meta) goes first when it was not written with the job's end.
        """
        execution = self.execution  # RQ's cleanup forgets it before the transaction is sent
        unsaved = jobs.take_unsaved_problem(job.id)

        def record() -> None:
            self.execution = execution
            if unsaved:
                job.save_meta()
            super(TapeWorker, self).handle_job_failure(job, queue, started_job_registry, exc_string)

        self._write_outcome(job, record)

    def _write_outcome(self, job: Job, record: Callable[[], None]) -> None:
        """Run `record` (a job's outcome, one transaction); run it again after REWRITE errors, with backoff.

        Redis holds the job all along (it is full, or read-only, or loading it): the outcome
        is written once it takes writes again. Stops waiting only when the worker is told to
        stop; RQ then finds the job abandoned, as for a lost worker.
        """
        rewrite(record, lambda: self._stop_requested, f"job {job.id}: outcome")

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: StartedJobRegistry) -> None:
        """Record the result, as RQ does, in one transaction; then enqueue the job's dependents, if any.

        RQ first WATCHes and reads the job's dependents (two round trips) to enqueue them in the
        same transaction. The API never enqueues with depends_on, so the transaction only asks
        whether the job has dependents; one that has gets them enqueued by RQ's own
        `enqueue_dependents` (a dependent added later sees the job finished and is enqueued at
        once). A repeating job takes RQ's own path.
        """
        if job.repeats_left is not None:
            super().handle_job_success(job, queue, started_job_registry)
            return
        assert job.started_at is not None and job.ended_at is not None  # set by perform_job
        result_ttl = job.get_result_ttl(self.default_result_ttl)
        if result_ttl != 0 and jobs.last_result_bytes > self.big_result_bytes:
            result_ttl = self.big_result_ttl_s if result_ttl < 0 else min(result_ttl, self.big_result_ttl_s)
        execution = self.execution  # RQ's cleanup forgets it before the transaction is sent

        has_dependents = False

        def record() -> None:
            nonlocal has_dependents
            self.execution = execution
            has_dependents = self._record_success(job, result_ttl)

        try:
            self._write_outcome(job, lambda: self._unless_full(job, record))
        except ResultRefused:
            self.execution = execution
            raise
        if has_dependents:
            queue.enqueue_dependents(job)

    def _unless_full(self, job: Job, record: Callable[[], None]) -> None:
        """Run `record`; if Redis is full, keep the job's problem and raise ResultRefused.

        RQ's failure path then records the failure (small), waiting for room if it must.
        """
        try:
            record()
        except redis.exceptions.OutOfMemoryError as exc:
            log.warning("job %s: Redis is full; its result (%d bytes) fails the job", job.id, jobs.last_result_bytes)
            job.meta[PROBLEM_META] = STORE_FULL_PROBLEM
            jobs.mark_unsaved_problem(job.id)
            raise ResultRefused(STORE_FULL_PROBLEM["detail"]) from exc

    def _record_success(self, job: Job, result_ttl: int) -> bool:
        """Write the job's success in one transaction; say whether the job has dependents."""
        assert job.started_at is not None and job.ended_at is not None
        with self.connection.pipeline() as pipe:
            job.heartbeat(job.ended_at, 0, pipeline=pipe)  # what handle_execution_ended sends alone
            self.increment_successful_job_count(pipeline=pipe)
            self.increment_total_working_time(job.ended_at - job.started_at, pipe)
            if result_ttl != 0:
                job._handle_success(
                    result_ttl,
                    pipeline=pipe,
                    worker_name=self.name,
                    execution_id=self.execution.id if self.execution else None,
                    execution_started_at=self.execution.created_at if self.execution else None,
                    execution_ended_at=job.ended_at,
                )
            job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
            self.cleanup_execution(job, pipeline=pipe)
            self.set_state(WorkerStatus.IDLE, pipeline=pipe)  # SimpleWorker would send it alone next
            pipe.exists(job.dependents_key)  # last: read after the job is recorded finished
            return bool(send_transaction(self.connection, pipe).result()[-1])

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        while True:  # Redis may have gone since `work` saw it
            try:
                return super().bootstrap(*args, **kwargs)
            except REDIS_ERRORS as exc:
                self.wait_for_redis(exc, register=False)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        while True:  # RQ retries a ConnectionError from the dequeue itself, not a TimeoutError
            try:
                return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            except REDIS_ERRORS as exc:
                self.wait_for_redis(exc)
                if self._stop_requested:
                    return None

    def run_maintenance_tasks(self) -> None:
        try:
            super().run_maintenance_tasks()
        except REDIS_ERRORS as exc:
            self.wait_for_redis(exc)
            # A pass cut short keeps RQ's per-queue lock for 15 minutes, and with it every
            # worker's cleaning, which the lost-job bound relies on.
            try:
                for queue in self.queues:
                    queue.release_maintenance_lock()
            except REDIS_ERRORS:
                pass  # the next pass meets the outage again and waits there

    def check_for_suspension(self, burst: bool) -> None:
        if time.monotonic() - self._suspension_checked < SUSPENSION_CHECK_S:
            return
        self._suspension_checked = time.monotonic()
        try:
            super().check_for_suspension(burst)
        except REDIS_ERRORS as exc:
            self.wait_for_redis(exc)

    def teardown(self) -> None:
        self._settle_prepared()
        try:
            super().teardown()
        except REDIS_ERRORS as exc:
            log.warning("could not unregister (%s); the registration expires within %d s", exc, self.worker_ttl)

    def wait_for_redis(self, exc: Exception, *, register: bool = True) -> None:
        """Retry with backoff until Redis answers again, then register again; TF stays warm."""
        retry_redis(self._register_again if register else self.connection.ping, exc, lambda: self._stop_requested)

    def _beat(self) -> bool:
        """Heartbeat in one round trip; say whether the registration had to be created anew."""
        with self.connection.pipeline(transaction=False) as pipe:
            super().heartbeat(self.worker_ttl, pipeline=pipe)
            created = pipe.execute()[0]
        return bool(created)

    def _register_again(self) -> None:
        """Write this worker's registration afresh (after Redis lost it, or was away)."""
        self.last_heartbeat = now()
        with self.connection.pipeline() as pipe:
            pipe.delete(self.key)
            pipe.hset(self.key, mapping={**self.serialize(), "state": self.get_state() or WorkerStatus.IDLE})
            worker_registration.register(self, pipe)
            pipe.expire(self.key, self.worker_ttl)
            pipe.execute()

    def _keep_alive(self) -> None:
        """Heartbeat while TF runs a long job or warms up, so that neither reads as a lost worker."""
        try:
            self._await_prepared()
            if self._running_job is not None and self.execution is not None:
                self.maintain_heartbeats(self._running_job)
            elif self._beat():
                self._register_again()
        except REDIS_ERRORS as exc:  # the job goes on; its outcome is recorded if Redis is back by then
            log.warning("heartbeat failed (%s: %s)", type(exc).__name__, exc)
