"""A rate limit per API key (per client address without keys), kept in Redis by flask-limiter."""

from __future__ import annotations

from flask import Flask, g
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from .auth import PUBLIC_ENDPOINTS


def limit_key() -> str:
    return f"key:{g.owner}" if g.get("owner") else f"addr:{get_remote_address()}"


def install_rate_limit(app: Flask, limit: str, storage_uri: str) -> Limiter | None:
    """Limit every non-public request to `limit` (e.g. "100/second;2000/minute"); "" turns it off."""
    if not limit:
        return None
    app.config["RATELIMIT_HEADERS_ENABLED"] = True  # Retry-After and X-RateLimit-* on answers
    limiter = Limiter(
        limit_key,
        app=app,
        default_limits=[limit],
        storage_uri=storage_uri,
        strategy="moving-window",
        key_prefix="tapeserve-ratelimit",
    )

    @limiter.request_filter
    def public() -> bool:
        from flask import request

        return request.endpoint in PUBLIC_ENDPOINTS

    return limiter
