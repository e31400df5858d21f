"""The bytes of request bodies this process holds at once, capped.

A JSON body costs the API far more than its size once parsed (a 62 MiB body of numbers:
~0.9 GB of Python floats), so a few big bodies at once could exhaust its memory. Each request
reserves its body's size before the body is read, and gives it back when the request ends,
however it ends; a request that does not fit is answered 503 with Retry-After, unread. The
count lives in this process's memory: no Redis round trip per request.
"""

from __future__ import annotations

import threading

from flask import Flask, Request, Response, current_app, g, request

from .problems import problem_response


class BodyBudget:
    """A count of reserved bytes, up to `capacity`, shared by this process's threads."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._reserved = 0
        self._lock = threading.Lock()

    @property
    def reserved(self) -> int:
        return self._reserved

    def reserve(self, size: int) -> bool:
        """Take `size` bytes of the budget, or return False (taking nothing) if they do not fit."""
        with self._lock:
            if self._reserved + size > self.capacity:
                return False
            self._reserved += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self._reserved -= size


def body_size(req: Request, max_body_bytes: int) -> int:
    """The bytes a request's body may hold here: its Content-Length, or the limit for a chunked one.

    Only a POST's body is read (the server discards any other unread, a piece at a time), and
    a body over the limit is refused (413) before it is read: neither holds anything.
    """
    if req.method != "POST":
        return 0
    length = req.content_length
    if length is not None:
        return length if length <= max_body_bytes else 0
    if "chunked" in req.headers.get("Transfer-Encoding", "").lower():
        return max_body_bytes
    return 0


def install_body_budget(app: Flask, budget: BodyBudget, max_body_bytes: int) -> None:
    """Reserve each request's body in `budget` before it is read; release it when the request ends."""

    @app.before_request
    def reserve_body() -> Response | None:
        size = body_size(request, max_body_bytes)
        if size == 0:
            return None
        if not budget.reserve(size):
            return problem_response(
                503,
                "server-busy",
                "The server is busy reading other requests",
                f"this request's body ({size} bytes) does not fit in the bytes of bodies in flight"
                f" (at most {budget.capacity}); it was not read",
                headers={"Retry-After": str(current_app.config["RETRY_AFTER_S"])},
            )
        g.body_reserved = size
        return None

    @app.teardown_request
    def release_body(_exc: BaseException | None) -> None:
        size = g.pop("body_reserved", 0)
        if size:
            budget.release(size)
