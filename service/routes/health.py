"""`/healthz` (the process answers) and `/readyz` (Redis answers and each pool has a worker)."""

from __future__ import annotations

import redis.exceptions
from flask import Blueprint, Response, current_app

from ..responses import json_response
from ..state import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Say the API process is alive."""
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Say whether requests can be served: Redis reachable, a live worker in each pool."""
    svc = services()
    try:
        svc.redis.ping()
        counts = svc.jobs.workers()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        body = {"status": "unavailable", "redis": f"unreachable ({type(exc).__name__})", "workers": {}}
        return json_response(body, 503, {"Retry-After": str(current_app.config["RETRY_AFTER_S"])})
    missing = [p for p in svc.pools if counts.get(p, 0) == 0]
    body = {"status": "ok" if not missing else "unavailable", "redis": "ok", "workers": counts}
    if missing:
        body["detail"] = f"no live worker in pool(s): {', '.join(missing)}"
        return json_response(body, 503, {"Retry-After": str(current_app.config["RETRY_AFTER_S"])})
    return json_response(body)
