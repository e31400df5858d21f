"""Read a request body as JSON: content type (415), size (413), syntax (400)."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType


def read_json(request: Request, max_bytes: int) -> Any:
    """Return the parsed JSON body, or raise the HTTP error that says what is wrong with it."""
    if request.mimetype != "application/json" and not request.mimetype.endswith("+json"):
        raise UnsupportedMediaType(f"send the body as application/json, not {request.mimetype or 'nothing'}")
    if request.content_length is not None and request.content_length > max_bytes:
        raise RequestEntityTooLarge(f"the body is {request.content_length} bytes; the limit is {max_bytes}")
    # Read at most one byte past the limit, so a body without Content-Length is bounded too.
    data = request.stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise RequestEntityTooLarge(f"the body is over the limit of {max_bytes} bytes")
    if not data.strip():
        raise BadRequest("the body is empty; send a JSON object")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {_describe(exc)}") from None


def _describe(exc: orjson.JSONDecodeError) -> str:
    if "depth limit" in exc.msg or "recursion limit" in exc.msg:
        return f"it is nested too deeply (at most 1024 levels; {exc.msg})"
    if "infinity" in exc.msg:
        return f"a number is out of the range of a double ({exc.msg}): use \"Infinity\" for infinity"
    return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
