"""`/healthz` (the process answers) and `/readyz` (Redis answers and each pool has a worker)."""

from __future__ import annotations

import redis.exceptions
from flask import Blueprint, current_app
from flask.typing import ResponseReturnValue

from ..state import services

bp = Blueprint("health", __name__)
# /readyz writes this key: a Redis that answers reads but refuses writes (full, read-only)
# cannot take a job, so the API is not ready.
READY_PROBE_KEY = "tapeserve:ready-probe"
READY_PROBE_TTL_S = 60


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """Say the API process is alive."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """Say whether requests can be served: Redis takes writes, a live worker in each pool."""
    svc = services()
    try:
        svc.redis.set(READY_PROBE_KEY, 1, ex=READY_PROBE_TTL_S)
        counts = svc.jobs.workers()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        return _not_ready(f"unreachable ({type(exc).__name__})")
    except (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError) as exc:
        return _not_ready(f"refuses writes ({type(exc).__name__})")
    missing = [p for p in svc.pools if counts.get(p, 0) == 0]
    body = {"status": "ok" if not missing else "unavailable", "redis": "ok", "workers": counts}
    if missing:
        body["detail"] = f"no live worker in pool(s): {', '.join(missing)}"
        return body, 503, {"Retry-After": str(current_app.config["RETRY_AFTER_S"])}
    return body


def _not_ready(redis_state: str) -> ResponseReturnValue:
    body = {"status": "unavailable", "redis": redis_state, "workers": {}}
    return body, 503, {"Retry-After": str(current_app.config["RETRY_AFTER_S"])}
