"""`python -m worker`: start RQ workers for a device pool, each with a warm TensorFlow process."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.exceptions
from redis.client import Pipeline
from rq import Queue, SimpleWorker, worker_registration
from rq.job import Job
from rq.utils import now
from rq.worker import WorkerStatus

from worker import jobs, metrics
from worker.graph.limits import Limits
from worker.logs import configure_logging
from worker.protocol import POOL_QUEUES, OrjsonSerializer, queue_name
from worker.redisconn import connect_from_env
from worker.runner import WAIT_SLICE_S, StartupError, TensorFlowProcess

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
REDIS_RETRY_FIRST_S = 0.5  # first wait after Redis stops answering; doubled on each failure
REDIS_RETRY_MAX_S = 5.0  # ...up to this: a restarted Redis is found again within ~5 s
REDIS_CONNECT_TIMEOUT_S = 2.0  # Redis answers a connect in milliseconds; no answer means it is away

# What a lost connection to Redis raises; redis-py has already retried the command by then.
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


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

    def __init__(self, *args: Any, runner: TensorFlowProcess | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.runner = runner
        self._running_job: Job | None = None
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
        if self.runner is not None and not self._stop_requested:
            self.runner.ensure_warm()

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        """Refresh this worker's registration for WORKER_TTL_S (RQ would add 60 s), in one round trip."""
        if pipeline is not None:
            super().heartbeat(self.worker_ttl, pipeline=pipeline)
            return
        try:
            recreated = self._beat()
        except REDIS_ERRORS as exc:
            self.wait_for_redis(exc)
            return
        if recreated:
            log.warning("worker %s: its registration was gone (Redis restarted?); registering again", self.name)
            self._register_again()

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
        try:
            super().check_for_suspension(burst)
        except REDIS_ERRORS as exc:
            self.wait_for_redis(exc)

    def teardown(self) -> None:
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
            if self._running_job is not None and self.execution is not None:
                self.maintain_heartbeats(self._running_job)
            elif self._beat():
                self._register_again()
        except REDIS_ERRORS as exc:  # the job goes on; its outcome is recorded if Redis is back by then
            log.warning("heartbeat failed (%s: %s)", type(exc).__name__, exc)


def retry_redis(attempt: Callable[[], Any], exc: Exception, stopping: Callable[[], bool] = lambda: False) -> None:
    """Log `exc`, then retry `attempt` with backoff until it gets through to Redis (or `stopping()`)."""
    delay = REDIS_RETRY_FIRST_S
    retry = 1
    while not stopping():
        log.warning("Redis unreachable (%s: %s); retry %d in %.1f s", type(exc).__name__, exc, retry, delay)
        time.sleep(delay)
        try:
            attempt()
        except REDIS_ERRORS as again:
            exc, retry, delay = again, retry + 1, min(delay * 2, REDIS_RETRY_MAX_S)
            continue
        log.warning("Redis reachable again after %d retries", retry)
        return


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--pool", choices=sorted(POOL_QUEUES), default=os.environ.get("TAPESERVE_POOL", "cpu"))
    parser.add_argument(
        "--processes",
        type=int,
        default=int(os.environ.get("TAPESERVE_WORKER_PROCESSES", "1")),
        help="worker processes to run, each with its own TensorFlow process",
    )
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("TAPESERVE_METRICS_PORT", "0")),
        help="serve Prometheus metrics on this port (0: off); with --processes N, ports N in a row",
    )
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument("--healthcheck", action="store_true", help="exit 0 if a worker of this host is alive")
    return parser.parse_args(argv)


def limits_from_env(environ: Any = os.environ) -> Limits:
    """Read `TAPESERVE_MAX_*` and `TAPESERVE_TIME_LIMIT_S` the way the API does."""
    prefix = "TAPESERVE_"
    return Limits.from_mapping({k[len(prefix) :].lower(): v for k, v in environ.items() if k.startswith(prefix)})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    if args.healthcheck:
        return healthcheck(args.redis_url)
    if args.processes > 1:
        return supervise(args)
    return work(args)


def work(args: argparse.Namespace) -> int:
    """Run one RQ worker with its TensorFlow process until SIGTERM (or an empty queue in burst)."""
    limits = limits_from_env()
    runner = TensorFlowProcess(limits, require_gpu=args.pool == "gpu")
    started = time.monotonic()
    try:
        runner.start()
    except StartupError as exc:
        log.error("cannot start a %s worker: %s", args.pool, exc)
        return 2
    log.info("TensorFlow warm in %.1f s", time.monotonic() - started)
    jobs.install_runner(runner)
    metrics.serve(args.metrics_port)
    connection = connect_from_env(
        args.redis_url,
        health_check_interval=10,
        socket_keepalive=True,
        # Bounds a heartbeat made from inside a job's wait (and so the time limit's overshoot)
        # when Redis's host is gone; RQ sets the read timeout itself (its dequeue wait + 10 s).
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
    )
    try:
        connection.ping()
    except REDIS_ERRORS as exc:  # a worker may start before Redis does (compose, say)
        retry_redis(connection.ping, exc)
    queues = [Queue(queue_name(q), connection=connection, serializer=OrjsonSerializer) for q in POOL_QUEUES[args.pool]]
    worker = TapeWorker(
        queues,
        runner=runner,
        connection=connection,
        serializer=OrjsonSerializer,
        name=f"{args.pool}.{socket.gethostname()}.{os.getpid()}",
        worker_ttl=WORKER_TTL_S,
        maintenance_interval=MAINTENANCE_INTERVAL_S,
        job_monitoring_interval=JOB_HEARTBEAT_S,
        log_job_description=False,
    )
    try:
        worker.work(burst=args.burst, logging_level="WARNING", with_scheduler=False)
        # RQ's loop also ends on an error it does not handle, such as a TF process that would
        # not start again: exit non-zero then, so that the supervisor starts a fresh worker.
        return 0 if runner.warm else 1
    finally:
        runner.close()


def supervise(args: argparse.Namespace) -> int:
    """Run `--processes` single workers as child processes (spawned, not forked) and keep them up."""
    command = [
        sys.executable,
        "-m",
        "worker",
        "--pool",
        args.pool,
        "--processes",
        "1",
        "--redis-url",
        args.redis_url,
    ]
    if args.burst:
        command.append("--burst")

    def start(i: int) -> subprocess.Popen[bytes]:
        port = [] if not args.metrics_port else ["--metrics-port", str(args.metrics_port + i)]
        return subprocess.Popen([*command, *port])

    children = [start(i) for i in range(args.processes)]
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        time.sleep(0.5)
        if stopping or args.burst:
            if all(c.poll() is not None for c in children):
                return 0
            continue
        for i, child in enumerate(children):
            code = child.poll()
            if code is not None:
                if code == 2:  # a startup error: restarting will not help
                    stop(signal.SIGTERM, None)
                    return 2
                log.warning("worker process %s exited with %s; starting another", child.pid, code)
                time.sleep(RESTART_BACKOFF_S)
                children[i] = start(i)


def healthcheck(redis_url: str) -> int:
    """Exit 0 when a worker of this host is registered and not suspended."""
    from rq import Worker

    host = socket.gethostname()
    try:
        connection = connect_from_env(redis_url, socket_connect_timeout=3)
        workers = Worker.all(connection=connection)
    except Exception as exc:  # the boundary of a health check: any failure is "unhealthy"
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    mine = [w for w in workers if w.hostname == host and w.get_state() != WorkerStatus.SUSPENDED]
    print(f"{len(mine)} worker(s) on {host}")
    return 0 if mine else 1
