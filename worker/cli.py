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
from collections.abc import Sequence
from typing import Any

from redis import Redis
from rq import Queue, SimpleWorker
from rq.worker import WorkerStatus

from worker import jobs
from worker.graph.limits import Limits
from worker.logs import configure_logging
from worker.protocol import POOL_QUEUES, OrjsonSerializer, queue_name
from worker.runner import StartupError, TensorFlowProcess

log = logging.getLogger("tapeserve.worker")

WORKER_TTL_S = 30  # a worker unseen this long is dead: the API stops counting it for its pool
MAINTENANCE_INTERVAL_S = 30  # how often a worker moves abandoned jobs to failed
JOB_TIMEOUT_MARGIN_S = 30  # RQ's own time-out, a backstop behind the TF process's time limit
RESTART_BACKOFF_S = 2.0  # between restarts of a worker process that exited by itself


class TapeWorker(SimpleWorker):
    """An RQ worker that runs jobs in-process (no fork) and stops a job by killing TF."""

    runner: TensorFlowProcess | None = None

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL) -> None:
        # RQ's stop-job command lands here; our "horse" is the TensorFlow process.
        if self.runner is not None:
            self.runner.kill()


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
    connection = Redis.from_url(args.redis_url, health_check_interval=10, socket_keepalive=True)
    queues = [Queue(queue_name(q), connection=connection, serializer=OrjsonSerializer) for q in POOL_QUEUES[args.pool]]
    worker = TapeWorker(
        queues,
        connection=connection,
        serializer=OrjsonSerializer,
        name=f"{args.pool}.{socket.gethostname()}.{os.getpid()}",
        worker_ttl=WORKER_TTL_S,
        maintenance_interval=MAINTENANCE_INTERVAL_S,
        log_job_description=False,
    )
    worker.runner = runner
    try:
        worker.work(burst=args.burst, logging_level="WARNING", with_scheduler=False)
    finally:
        runner.close()
    return 0


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
    children = [subprocess.Popen(command) for _ in range(args.processes)]
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
                children[i] = subprocess.Popen(command)


def healthcheck(redis_url: str) -> int:
    """Exit 0 when a worker of this host is registered and not suspended."""
    from rq import Worker

    host = socket.gethostname()
    try:
        connection = Redis.from_url(redis_url, socket_connect_timeout=3)
        workers = Worker.all(connection=connection)
    except Exception as exc:  # the boundary of a health check: any failure is "unhealthy"
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    mine = [w for w in workers if w.hostname == host and w.get_state() != WorkerStatus.SUSPENDED]
    print(f"{len(mine)} worker(s) on {host}")
    return 0 if mine else 1
