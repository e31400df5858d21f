"""RFC 9457 problem documents: the one place where errors become HTTP answers.

Domain errors (TapeserveError) carry their own status; werkzeug's HTTP errors and the Redis
errors that mean "not now" (unreachable, loading, read-only, full) are translated here, once.
Anything else is a bug: it is logged with its trace and answered with a bare 500 problem that
says nothing of the internals.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import orjson
import redis.exceptions
from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException, InternalServerError, default_exceptions
from werkzeug.http import HTTP_STATUS_CODES

from tapecore.errors import PROBLEM_TYPES, ProblemType, TapeserveError, problem_type

log = logging.getLogger("tapeserve.api")

PROBLEM_JSON = "application/problem+json"

# How lower layers' exceptions map to problems: (status, type, title). A test checks that
# each exception the API can meet has an entry here.
LOWER_EXCEPTIONS: dict[type[Exception], tuple[int, str, str]] = {
    redis.exceptions.ConnectionError: (503, "redis-unavailable", "The job store is unavailable"),
    redis.exceptions.TimeoutError: (503, "redis-unavailable", "The job store is unavailable"),
    redis.exceptions.BusyLoadingError: (503, "redis-unavailable", "The job store is loading"),
    redis.exceptions.ReadOnlyError: (503, "redis-unavailable", "The job store is read-only (failing over)"),
    # At maxmemory with noeviction Redis refuses writes until results expire or are read.
    redis.exceptions.OutOfMemoryError: (503, "redis-unavailable", "The job store is full"),
}


# The API's own problems that no domain error class describes.
API_PROBLEM_TYPES = (
    ProblemType(
        "redis-unavailable",
        "The job store is unavailable",
        503,
        "Redis, which holds the queue and the results, is unreachable, loading, read-only or full.",
        "Retry after the seconds that Retry-After gives.",
    ),
    ProblemType(
        "server-busy",
        "The server is busy reading other requests",
        503,
        "This API process holds as many request bodies as it may; this one was not read.",
        "Retry after the seconds that Retry-After gives.",
    ),
)


def http_kind(title: str) -> str:
    """Return the problem kind of an HTTP status's title ("Not Found" -> "not-found")."""
    return title.lower().replace(" ", "-")


def problem_catalogue() -> dict[str, ProblemType]:
    """Every problem type the API, the worker, gunicorn and nginx answer with, by kind."""
    catalogue = dict(PROBLEM_TYPES)
    catalogue.update((p.kind, p) for p in API_PROBLEM_TYPES)
    for status, title in HTTP_STATUS_CODES.items():
        kind = http_kind(title)
        if status < 400 or status == 500 or not kind.replace("-", "").isalpha():  # 500: "internal-error"
            continue
        exc = default_exceptions.get(status)
        meaning = exc.description if exc is not None and exc.description else f"The server answered {title}."
        what = "Change the request as `detail` says" if status < 500 else "Retry later"
        catalogue.setdefault(kind, ProblemType(kind, title, status, meaning, what + "."))
    return catalogue


def problem_response(
    status: int,
    kind: str,
    title: str,
    detail: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    """Answer with a problem document."""
    body: dict[str, Any] = {
        "type": problem_type(kind),
        "title": title,
        "status": status,
        "detail": detail,
        "errors": errors or [],
    }
    if extra:
        body.update(extra)
    return problem_from_document(body, headers=headers)


def problem_from_document(body: dict[str, Any], *, headers: dict[str, str] | None = None) -> Response:
    """Answer with an already built problem document (a job's error, say)."""
    # A URI reference: the path as it was sent (percent-encoded), not as it was decoded.
    body.setdefault("instance", quote(request.path, safe="/:@!$&'()*+,;=-._~"))
    response = Response(orjson.dumps(body), status=int(body["status"]), mimetype=PROBLEM_JSON)
    for key, value in (headers or {}).items():
        response.headers[key] = value
    if response.status_code == 503 and "Retry-After" not in response.headers:
        # Every 503 is "not now": a job's own (result-not-stored) as much as a Redis outage.
        response.headers["Retry-After"] = str(current_app.config["RETRY_AFTER_S"])
    return response


def register_error_handlers(app: Flask) -> None:
    """Install the handlers that turn every error into a problem document."""

    @app.errorhandler(TapeserveError)
    def domain_error(exc: TapeserveError) -> Response:
        return problem_from_document(exc.problem())

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        if isinstance(exc, InternalServerError):
            return internal_error(exc)
        status = exc.code or 500
        headers = {k: v for k, v in exc.get_headers() if k.lower() not in ("content-type", "content-length")}
        kind = http_kind(exc.name or "error")
        return problem_response(status, kind, exc.name, exc.description or exc.name, headers=headers)

    for exc_type, (status, kind, title) in LOWER_EXCEPTIONS.items():

        def lower_error(exc: Exception, _s: int = status, _k: str = kind, _t: str = title) -> Response:
            log.warning("%s: %s", _t, type(exc).__name__)
            retry = str(current_app.config["RETRY_AFTER_S"])
            return problem_response(_s, _k, _t, "try again shortly", headers={"Retry-After": retry})

        app.register_error_handler(exc_type, lower_error)

    @app.errorhandler(InternalServerError)
    def internal_error(exc: InternalServerError) -> Response:
        original = getattr(exc, "original_exception", None)
        if original is not None:
            log.error("unhandled error on %s %s", request.method, request.path, exc_info=original)
        return problem_response(500, "internal-error", "Internal error", "an unexpected error; it has been logged")
