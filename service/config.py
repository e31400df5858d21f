"""The API's settings: defaults here, overridden by `TAPESERVE_*` variables and tests."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tapecore.limits import Limits

ROOT = Path(__file__).resolve().parent.parent

DEFAULTS: dict[str, Any] = {
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "DEFAULT_WAIT_S": 5.0,  # POST waits this long for a result before answering 202
    "MAX_WAIT_S": 60.0,  # the most a client may ask for with `Prefer: wait=N`
    "RESULT_TTL_S": 3600,  # finished jobs and their results are kept an hour
    "FAILURE_TTL_S": 3600,  # failed jobs likewise
    "QUEUED_TTL_S": 86_400,  # a job nobody has started within a day is dropped
    "POOLS": "cpu",  # pools this deployment runs; /readyz wants a worker in each
    "WORKER_CHECK_S": 1.0,  # how long a "pool has a worker" answer is reused
    "RETRY_AFTER_S": 5,  # sent with 503 answers
    "OPENAPI_PATH": str(ROOT / "openapi.yaml"),
    "API_KEYS": "",  # comma-separated keys; empty (and no file) means no authentication
    "API_KEYS_FILE": "",  # a file of keys, one per line
    "RATE_LIMIT": "",  # per key (or per client address without keys), e.g. "100/second"
    # per client address, counted before the key is checked; None: DEFAULT_ADDRESS_RATE_LIMIT
    # when API keys are on, off without them; "" turns it off
    "ADDRESS_RATE_LIMIT": None,
    # Redis connections per API process: each request in flight may hold one, so this must
    # exceed gunicorn's threads (64); redis-py's default of 100 leaves little room above that
    "REDIS_MAX_CONNECTIONS": 1_100,
    # requests of one API process parked waiting for a job; past it a wait is declined (the
    # answer comes at once). Below gunicorn's threads (64), so some are always free
    "MAX_WAITING_REQUESTS": 48,
    "PROXY_HOPS": 0,  # trusted proxies in front that set X-Forwarded-For (nginx: 1); 0 trusts none
    "LOG_FORMAT": "text",
    # bytes of request bodies one API process holds at once; None: max_body_bytes and a quarter
    # more (one body at the limit, with room for small ones beside it)
    "MAX_INFLIGHT_BODY_BYTES": None,
}


def inflight_body_bytes(config: Mapping[str, Any], limits: Limits) -> int:
    """The per-process budget of body bytes in flight; it must admit one body at the limit."""
    configured = config.get("MAX_INFLIGHT_BODY_BYTES")
    if configured is None:
        return limits.max_body_bytes + limits.max_body_bytes // 4
    budget = int(configured)
    if budget < limits.max_body_bytes:
        raise ValueError(
            f"MAX_INFLIGHT_BODY_BYTES = {budget} is under max_body_bytes = {limits.max_body_bytes}:"
            " a body at the limit could never be read"
        )
    return budget
