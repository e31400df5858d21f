"""The reconnect policy: wait out a Redis that is lost, full, read-only or loading.

RQ's own loop retries only a failed dequeue; any other Redis error ends `work()`. The worker
waits instead, with redis-py's `Retry` and `ExponentialBackoff`, and keeps TensorFlow warm.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis.exceptions
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

log = logging.getLogger("tapeserve.worker")

REDIS_RETRY_FIRST_S = 0.5  # first wait after Redis stops answering; doubled on each failure
REDIS_RETRY_MAX_S = 5.0  # ...up to this: a restarted Redis is found again within ~5 s
REDIS_CONNECT_TIMEOUT_S = 2.0  # Redis answers a connect in milliseconds; no answer means it is away

# What a lost connection to Redis raises; redis-py has already retried the command by then.
# LOADING (a restarted Redis reading its data back) is a ConnectionError to redis-py.
LOST = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# What a Redis that answers but takes no writes raises: full at maxmemory with noeviction
# (OOM), or a replica during a failover (READONLY). Waited out like a lost connection.
PRESSURE = (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)
REDIS_ERRORS = (*LOST, *PRESSURE)
# A job's outcome is written again after these: the Redis that answers them still has the job.
REWRITE = (redis.exceptions.BusyLoadingError, *PRESSURE)


def _backoff() -> ExponentialBackoff:
    # ExponentialBackoff waits base * 2**failures: the first retry waits REDIS_RETRY_FIRST_S.
    return ExponentialBackoff(cap=REDIS_RETRY_MAX_S, base=REDIS_RETRY_FIRST_S / 2)


class Stopped(Exception):
    """The worker was told to stop while it waited for Redis."""


def retry_redis(attempt: Callable[[], Any], exc: Exception, stopping: Callable[[], bool] = lambda: False) -> None:
    """Log `exc`, then retry `attempt` with backoff until it gets through to Redis (or `stopping()`)."""

    def fail(error: Exception, failures: int) -> None:
        if stopping():
            raise Stopped from error
        state = "full or read-only" if isinstance(error, PRESSURE) else "unreachable"
        delay = _backoff().compute(failures)
        log.warning("Redis %s (%s: %s); retry %d in %.1f s", state, type(error).__name__, error, failures, delay)

    pending = [exc]  # the failure that brought us here: the first attempt comes after a wait

    def again() -> Any:
        if pending:
            raise pending.pop()
        return attempt()

    try:
        Retry(_backoff(), retries=-1, supported_errors=REDIS_ERRORS).call_with_retry(
            again, fail, with_failure_count=True
        )
    except Stopped:
        return
    log.warning("Redis reachable again")


def rewrite(record: Callable[[], None], stopping: Callable[[], bool], what: str) -> None:
    """Run `record` (a transaction); run it again after REWRITE errors, with backoff, unless `stopping()`."""

    def fail(error: Exception, failures: int) -> None:
        if stopping():
            raise error
        delay = _backoff().compute(failures)
        log.warning("%s not recorded (%s: %s); again in %.1f s", what, type(error).__name__, error, delay)

    Retry(_backoff(), retries=-1, supported_errors=REWRITE).call_with_retry(record, fail, with_failure_count=True)
