"""Read a request body as JSON: content type (415), size (413), syntax (400)."""

from __future__ import annotations

from typing import IO, Any

import orjson
from flask import Request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

from tapecore.errors import FieldError, LimitExceeded, pointer

CHUNKED_READ_BYTES = 1 << 20  # a chunked body is read a MiB at a time


def read_json(request: Request, max_bytes: int, max_depth: int) -> tuple[Any, bytes]:
    """Return the parsed JSON body and its bytes, or raise the HTTP error that says what is wrong."""
    if request.mimetype != "application/json" and not request.mimetype.endswith("+json"):
        raise UnsupportedMediaType(f"send the body as application/json, not {request.mimetype or 'nothing'}")
    if request.content_length is not None and request.content_length > max_bytes:
        raise RequestEntityTooLarge(
            f"the body is {request.content_length} bytes, over the limit max_body_bytes = {max_bytes}"
        )
    data = read_bounded(request.stream, max_bytes, request.content_length)
    if not data.strip():
        raise BadRequest("the body is empty; send a JSON object")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {_describe(exc)}") from None
    check_depth(doc, max_depth)
    return doc, data


def read_bounded(stream: IO[bytes], max_bytes: int, length: int | None) -> bytes:
    """Read the whole body of `length` bytes (None: chunked), or raise 413 once it is past `max_bytes`.

    By hand, not `request.get_data()`: under half of Werkzeug's time for a big body (docs/performance.md).

    A read allocates a buffer of the size asked for, so a body with a length is read as that
    length (the caller has refused one over the limit), never as the limit. A chunked body
    arrives in pieces: it is read a piece at a time until it ends, at most one byte past the
    limit. Werkzeug's own MAX_CONTENT_LENGTH check on such a stream (set to the limit plus
    that byte) raises a bare 413; it becomes this one.
    """
    parts: list[bytes] = []
    size = 0
    while size <= max_bytes:
        want = length - size if length is not None else min(CHUNKED_READ_BYTES, max_bytes + 1 - size)
        if want <= 0:
            break
        try:
            part = stream.read(want)
        except RequestEntityTooLarge:
            size = max_bytes + 1
            break
        if not part:
            break
        parts.append(part)
        size += len(part)
    if size > max_bytes:
        raise RequestEntityTooLarge(f"the body is over the limit max_body_bytes = {max_bytes}")
    return parts[0] if len(parts) == 1 else b"".join(parts)  # one read: no copy


def check_depth(doc: Any, limit: int) -> None:
    """Raise LimitExceeded, pointing at the place, if containers nest deeper than `limit`.

    A list whose first element is a scalar is a row of numbers: its elements are checked as
    scalars later (anything else in it is refused then), so the walk skips it and stays
    cheap for big tensors.
    """
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(doc, 1, ())]
    while stack:
        obj, depth, path = stack.pop()
        if depth > limit:
            raise LimitExceeded(
                FieldError(pointer(*path), f"JSON nests deeper than the limit max_json_depth = {limit}")
            )
        if isinstance(obj, dict):
            stack.extend((v, depth + 1, (*path, k)) for k, v in obj.items() if isinstance(v, dict | list))
        elif isinstance(obj, list) and obj and isinstance(obj[0], dict | list):
            stack.extend((v, depth + 1, (*path, i)) for i, v in enumerate(obj) if isinstance(v, dict | list))


def _describe(exc: orjson.JSONDecodeError) -> str:
    if "depth limit" in exc.msg or "recursion limit" in exc.msg:
        return f"it is nested too deeply (at most 1024 levels; {exc.msg})"
    if "infinity" in exc.msg:
        return f'a number is out of the range of a double ({exc.msg}): use "Infinity" for infinity'
    return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
