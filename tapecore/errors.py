"""The domain errors of a gradient request, each carrying JSON Pointers into the request.

Errors are values until the boundary: the validator and the engine raise these, and only
the API (or the job wrapper) turns them into RFC 9457 problem documents.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass, field
from typing import Any

_SHORT = reprlib.Repr()  # keyword arguments arrive only in Python 3.12
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 2, 30, 30, 4, 4


def short_repr(value: Any) -> str:
    """A short repr for messages, bounded in depth so that hostile nesting cannot recurse."""
    return _SHORT.repr(value)


def pointer(*parts: str | int) -> str:
    """Return the JSON Pointer (RFC 6901) made of these reference tokens."""
    joined = "/".join(map(str, parts))
    if parts and "~" not in joined and joined.count("/") == len(parts) - 1:
        return "/" + joined  # nothing to escape: the common case, at a third of the cost
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


@dataclass(frozen=True)
class FieldError:
    """One thing wrong with the request, at `path` (a JSON Pointer)."""

    path: str
    message: str
    position: int | None = None  # character offset, for errors inside `expression`
    # For a refusal by a limit: the limit's name, its value, and what the request measured
    # or was estimated to need, so that a client can act on it without parsing the message.
    limit: str | None = None
    maximum: int | float | None = None
    estimate: int | float | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "message": self.message}
        if self.position is not None:
            out["position"] = self.position
        if self.limit is not None:
            out["limit"] = self.limit
            out["maximum"] = self.maximum
            out["estimate"] = self.estimate
        return out

    @classmethod
    def from_dict(cls, item: dict[str, Any]) -> FieldError:
        """Read an error item back (from a problem document that crossed a pipe or a queue)."""
        keys = ("position", "limit", "maximum", "estimate")
        return cls(item["path"], item["message"], **{k: item.get(k) for k in keys})


class TapeserveError(Exception):
    """Base of every error this package raises on purpose."""

    kind = "invalid-graph"
    title = "The graph is not valid"
    status = 422

    def __init__(self, errors: list[FieldError] | FieldError, detail: str | None = None):
        self.errors = [errors] if isinstance(errors, FieldError) else list(errors)
        self.detail = detail or "; ".join(f"{e.path or '/'}: {e.message}" for e in self.errors[:5])
        super().__init__(self.detail)

    def problem(self) -> dict[str, Any]:
        """Return this error as the body of an RFC 9457 problem document."""
        return {
            "type": f"https://tapeserve.dev/problems/{self.kind}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "errors": [e.as_dict() for e in self.errors],
        }


class GraphError(TapeserveError):
    """The request is well-formed JSON but not a valid graph (422)."""


class LimitExceeded(GraphError):
    """A size, depth, count or time limit was exceeded (422, or 413 for a tensor's bytes)."""

    kind = "limit-exceeded"
    title = "A limit was exceeded"


class TensorTooLarge(LimitExceeded):
    """One input tensor is over its size limit (413, as the contract asks)."""

    status = 413
    title = "A tensor is too large"


class ExecutionError(GraphError):
    """TensorFlow refused the graph while running it (an op's invalid argument, say)."""

    kind = "execution-error"
    title = "TensorFlow could not run the graph"


@dataclass
class ErrorCollector:
    """Collect every error of a document before raising them together."""

    errors: list[FieldError] = field(default_factory=list)
    limit_errors: list[FieldError] = field(default_factory=list)

    def add(self, path: str, message: str, position: int | None = None) -> None:
        self.errors.append(FieldError(path, message, position))

    def limit(
        self,
        path: str,
        message: str,
        position: int | None = None,
        *,
        limit: str | None = None,
        maximum: int | float | None = None,
        estimate: int | float | None = None,
    ) -> None:
        self.limit_errors.append(FieldError(path, message, position, limit, maximum, estimate))

    def absorb(self, exc: TapeserveError) -> None:
        """Add the errors of an exception raised by a part of the validator."""
        (self.limit_errors if isinstance(exc, LimitExceeded) else self.errors).extend(exc.errors)

    def __bool__(self) -> bool:
        return bool(self.errors or self.limit_errors)

    def raise_if_any(self) -> None:
        """Raise the collected errors: limit errors first, since they explain the rest."""
        if self.limit_errors:
            raise LimitExceeded(self.limit_errors + self.errors)
        if self.errors:
            raise GraphError(self.errors)


class TimeLimitExceeded(LimitExceeded):
    """The graph ran past the time limit and its TensorFlow process was stopped."""

    kind = "time-limit-exceeded"
    title = "The graph ran past its time limit"


class MemoryLimitExceeded(LimitExceeded):
    """The TensorFlow process went over its memory cap (or TF ran out of memory) and was replaced."""

    kind = "memory-limit-exceeded"
    title = "The graph needed more memory than the worker allows"


class WorkerCrashed(TapeserveError):
    """The TensorFlow process died while running the graph (an abort, a segfault, OOM)."""

    kind = "worker-crashed"
    title = "The worker crashed while running this graph"


class JobStopped(TapeserveError):
    """The job was stopped on request (DELETE /v1/jobs/{id}) while it ran."""

    kind = "job-canceled"
    title = "The job was canceled"
    status = 409


class InternalError(TapeserveError):
    """A bug: something failed that validation should have made impossible."""

    kind = "internal-error"
    title = "Internal error"
    status = 500


class RemoteProblem(TapeserveError):
    """A problem document raised again on the far side of a pipe or a queue."""

    def __init__(self, problem: dict[str, Any]):
        self._problem = problem
        errors = [FieldError.from_dict(e) for e in problem.get("errors", [])]
        super().__init__(errors, detail=problem.get("detail", ""))
        self.status = int(problem.get("status", 500))
        self.kind = str(problem.get("type", "")).rsplit("/", 1)[-1] or "internal-error"
        self.title = str(problem.get("title", "Error"))

    def problem(self) -> dict[str, Any]:
        return dict(self._problem)
