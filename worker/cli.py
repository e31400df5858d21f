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

from rq import Queue
from rq.worker import WorkerStatus

from tapecore.limits import Limits
from tapecore.logs import configure_logging
from tapecore.protocol import POOL_QUEUES, OrjsonSerializer, queue_name
from tapecore.redisconn import connect_from_env
from worker import jobs, metrics
from worker.reconnect import REDIS_CONNECT_TIMEOUT_S, REDIS_ERRORS, retry_redis
from worker.runner import DEFAULT_MEMORY_LIMIT_MB, StartupError, TensorFlowProcess
from worker.tapeworker import (
    BIG_RESULT_BYTES,
    BIG_RESULT_TTL_S,
    JOB_HEARTBEAT_S,
    MAINTENANCE_INTERVAL_S,
    RESTART_BACKOFF_S,
    WORKER_TTL_S,
    TapeJob,
    TapeWorker,
    check_rq_version,
)

log = logging.getLogger("tapeserve.worker")


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
    parser.add_argument(
        "--tf-memory-limit",
        type=int,
        metavar="MB",
        default=int(os.environ.get("TAPESERVE_TF_MEMORY_LIMIT_MB", str(DEFAULT_MEMORY_LIMIT_MB))),
        help="memory cap of the TensorFlow process in MiB (0: none; the warm process holds ~650 MiB); "
        "a job over it fails with memory-limit-exceeded and the process is replaced",
    )
    parser.add_argument(
        "--big-result-bytes",
        type=int,
        default=int(os.environ.get("TAPESERVE_BIG_RESULT_BYTES", str(BIG_RESULT_BYTES))),
        help="a result over this many bytes of JSON is kept only --big-result-ttl seconds",
    )
    parser.add_argument(
        "--big-result-ttl",
        type=int,
        metavar="S",
        default=int(os.environ.get("TAPESERVE_BIG_RESULT_TTL_S", str(BIG_RESULT_TTL_S))),
        help="how long a big result is kept in Redis, if shorter than the API's result TTL",
    )
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument("--healthcheck", action="store_true", help="exit 0 if a worker of this host is alive")
    args = parser.parse_args(argv)
    if args.tf_memory_limit < 0:
        parser.error("--tf-memory-limit: give MiB, or 0 for no cap")
    return args


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
    try:
        check_rq_version()
    except RuntimeError as exc:
        log.error("cannot start a %s worker: %s", args.pool, exc)
        return 2
    limits = Limits.from_mapping(os.environ, prefix="TAPESERVE_")
    runner = TensorFlowProcess(limits, require_gpu=args.pool == "gpu", memory_limit_mb=args.tf_memory_limit)
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
        job_class=TapeJob,
        name=f"{args.pool}.{socket.gethostname()}.{os.getpid()}",
        worker_ttl=WORKER_TTL_S,
        maintenance_interval=MAINTENANCE_INTERVAL_S,
        job_monitoring_interval=JOB_HEARTBEAT_S,
        log_job_description=False,
        big_result_bytes=args.big_result_bytes,
        big_result_ttl_s=args.big_result_ttl,
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
        "--tf-memory-limit",
        str(args.tf_memory_limit),
        "--big-result-bytes",
        str(args.big_result_bytes),
        "--big-result-ttl",
        str(args.big_result_ttl),
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
