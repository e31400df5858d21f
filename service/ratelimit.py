"""Rate limits kept in Redis by flask-limiter: one per client address, one per API key.

Both are application-wide: a client has one budget across every route, not one per route.
The address limit counts every non-public request, a wrong key's included: the limiter runs
after the key is identified but before a missing or wrong key is refused (see service.auth).
Only a 429 carries `Retry-After` and `X-RateLimit-*`; the limiter's headers on every answer
would cost a Redis read per request.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import redis.exceptions
from flask import Flask, Response, current_app, g, request
from flask_limiter import ApplicationLimit, Limiter, RateLimitExceeded

from .auth import PUBLIC_ENDPOINTS
from .problems import problem_response

KEY_PREFIX = "tapeserve-ratelimit"
REDIS_TIMEOUT_S = 5  # seconds, as the API's own Redis calls
# With keys on, what one address may send, valid key or not: it bounds key guessing, and no
# one address takes more than a fifth to a third of what the API serves on the reference
# host (300-570 small requests a second, docs/scaling.md).
DEFAULT_ADDRESS_RATE_LIMIT = "100/second"


def address_limit(configured: str | None, keys_on: bool) -> str:
    """The per-address limit: as configured, or the default when keys are on and none is set."""
    if configured is None:
        return DEFAULT_ADDRESS_RATE_LIMIT if keys_on else ""
    return str(configured)


def client_address() -> str:
    """The client's address as the WSGI server (or ProxyFix, behind a trusted proxy) saw it."""
    return f"addr:{request.remote_addr or 'unknown'}"


def budget_key() -> str:
    """Whose budget a request spends: its API key's, or its address's when it has no valid key."""
    return f"key:{g.owner}" if g.get("owner") else client_address()


def is_public() -> bool:
    """Whether the request is to a public route (health, metrics, docs) or to none: never limited."""
    return request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None


def install_rate_limit(app: Flask, key_limit: str, address_limit: str, storage_uri: str) -> Limiter | None:
    """Limit non-public requests per key (`key_limit`) and per address (`address_limit`); "" is off.

    A limit is written as flask-limiter parses it: "100/second;2000/minute".
    """
    limits: list[str | Callable[[], str] | ApplicationLimit] = []
    if address_limit:
        limits.append(ApplicationLimit(address_limit, key_function=client_address, scope="address"))
    if key_limit:
        limits.append(ApplicationLimit(key_limit, key_function=budget_key, scope="key"))
    if not limits:
        return None
    limiter = Limiter(
        budget_key,
        app=app,
        application_limits=limits,
        storage_uri=storage_uri,
        # A Redis that hangs fails the request (a 503) instead of holding it.
        storage_options={"socket_timeout": REDIS_TIMEOUT_S, "socket_connect_timeout": REDIS_TIMEOUT_S},
        strategy="moving-window",
        key_prefix=KEY_PREFIX,
        headers_enabled=False,
    )
    limiter.request_filter(is_public)

    @app.errorhandler(RateLimitExceeded)
    def over_the_limit(exc: RateLimitExceeded) -> Response:
        return _too_many_requests(limiter, exc)

    return limiter


def _too_many_requests(limiter: Limiter, exc: RateLimitExceeded) -> Response:
    """A 429 problem that says which limit, and when the window has room again."""
    breached = limiter.current_limit
    item = exc.limit.limit
    # Without the window's state (Redis went away meanwhile) a whole window is a safe wait.
    reset_at = time.time() + item.get_expiry()
    if breached is not None:
        try:
            reset_at = breached.reset_at
        except redis.exceptions.RedisError:
            current_app.logger.warning("rate limit window unreadable; Retry-After is a whole window")
    retry_after = max(1, math.ceil(reset_at - time.time()))
    scope = breached.request_args[-1] if breached is not None else "key"
    headers = {
        "Retry-After": str(retry_after),
        "X-RateLimit-Limit": str(item.amount),
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(int(reset_at)),
    }
    who = "this client address" if scope == "address" else "this API key" if g.get("owner") else "this client"
    return problem_response(
        429,
        "too-many-requests",
        "Too Many Requests",
        f"over the rate limit of {item} for {who}, across all routes; retry in {retry_after} s",
        headers=headers,
    )
