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


# Problem `type` URIs are relative references (RFC 9457 allows them) to pages the API serves
# itself at `/problems/{kind}`, so they resolve against whichever host answered.
PROBLEM_BASE = "/problems/"


def problem_type(kind: str) -> str:
    """Return the `type` URI of the problem named `kind`."""
    return PROBLEM_BASE + kind


@dataclass(frozen=True)
class ProblemType:
    """What `/problems/{kind}` says of one kind of problem."""

    kind: str
    title: str
    status: int
    meaning: str
    action: str


# Every problem type this package and the worker answer with; the API adds the HTTP ones.
PROBLEM_TYPES: dict[str, ProblemType] = {}


def register_problem_type(kind: str, title: str, status: int, meaning: str, action: str) -> None:
    """Add a problem type to the catalogue (the first registration of a kind wins)."""
    PROBLEM_TYPES.setdefault(kind, ProblemType(kind, title, status, meaning, action))


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
    action = "Fix the fields that `errors[]` points at (JSON Pointers into the request) and send it again."

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:  # a class that names a kind of its own describes it
            meaning = (cls.__doc__ or cls.title).strip().splitlines()[0]
            register_problem_type(cls.kind, cls.title, cls.status, meaning, cls.action)

    def __init__(self, errors: list[FieldError] | FieldError, detail: str | None = None):
        self.errors = [errors] if isinstance(errors, FieldError) else list(errors)
        self.detail = detail or "; ".join(f"{e.path or '/'}: {e.message}" for e in self.errors[:5])
        super().__init__(self.detail)

    def problem(self) -> dict[str, Any]:
        """Return this error as the body of an RFC 9457 problem document."""
        return {
            "type": problem_type(self.kind),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "errors": [e.as_dict() for e in self.errors],
        }


class GraphError(TapeserveError):
    """The request is well-formed JSON but not a valid graph (422)."""


register_problem_type(
    TapeserveError.kind,
    TapeserveError.title,
    TapeserveError.status,
    "The request is well-formed JSON but not a valid graph: `errors[]` points at each fault.",
    TapeserveError.action,
)


class LimitExceeded(GraphError):
    """A size, depth, count or time limit was exceeded (422, or 413 for a tensor's bytes)."""

    kind = "limit-exceeded"
    title = "A limit was exceeded"
    action = "Stay within the limit that `errors[].limit` names (`GET /v1/limits` lists them): send less, or split it."


class TensorTooLarge(LimitExceeded):
    """One input tensor is over its size limit (413, as the contract asks)."""

    status = 413
    title = "A tensor is too large"


class ExecutionError(GraphError):
    """TensorFlow refused the graph while running it (an op's invalid argument, say)."""

    kind = "execution-error"
    title = "TensorFlow could not run the graph"
    action = "Change the inputs or attrs that the message names so that the op accepts them."


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
        # One fault met twice (a missing name used twice in an expression) is said once.
        if self.limit_errors:
            raise LimitExceeded(list(dict.fromkeys(self.limit_errors + self.errors)))
        if self.errors:
            raise GraphError(list(dict.fromkeys(self.errors)))


class TimeLimitExceeded(LimitExceeded):
    """The graph ran past the time limit and its TensorFlow process was stopped."""

    kind = "time-limit-exceeded"
    title = "The graph ran past its time limit"
    action = "Send a smaller graph or smaller tensors; the limit is `time_limit_s` in `GET /v1/limits`."


class MemoryLimitExceeded(LimitExceeded):
    """The TensorFlow process went over its memory cap (or TF ran out of memory) and was replaced."""

    kind = "memory-limit-exceeded"
    title = "The graph needed more memory than the worker allows"
    action = "Send a smaller graph or smaller tensors."


class WorkerCrashed(TapeserveError):
    """The TensorFlow process died while running the graph (an abort, a segfault, OOM)."""

    kind = "worker-crashed"
    title = "The worker crashed while running this graph"
    action = "Send it again once; if it crashes again, report the graph with the answer's X-Request-ID."


class JobStopped(TapeserveError):
    """The job was stopped on request (DELETE /v1/jobs/{id}) while it ran."""

    kind = "job-canceled"
    title = "The job was canceled"
    status = 409
    action = "Nothing to fix: send the request again to run it."


class InternalError(TapeserveError):
    """A bug: something failed that validation should have made impossible."""

    kind = "internal-error"
    title = "Internal error"
    status = 500
    action = "Report it with the answer's X-Request-ID; the server has logged it."


class NoWorker(TapeserveError):
    """No live worker serves the pool the request asks for, so nothing was queued."""

    kind = "no-worker"
    title = "No worker serves this device"
    status = 503
    action = "Retry after the seconds that Retry-After gives, or ask for `device: any`."

    def __init__(self, device: str):
        message = f"no live worker serves the '{device}' pool"
        super().__init__(FieldError("/device", message), detail=f"{message}; the job was not queued")


# Problems the worker and the job store write as documents (their `problem()`), never raised.


class WorkerLost(TapeserveError):
    """The worker stopped (killed, or its host lost) while it ran the job, so the job did not finish."""

    kind = "worker-lost"
    title = "The worker running this job was lost"
    action = "Send the request again."

    def __init__(self) -> None:
        super().__init__([], "the job did not finish: its worker stopped (killed, or its host lost) while running it")


class ResultNotStored(TapeserveError):
    """The graph ran, but the job store was full and refused its result."""

    kind = "result-not-stored"
    title = "The result could not be stored"
    status = 503
    action = "Send the request again after the seconds that Retry-After gives."

    def __init__(self) -> None:
        super().__init__(
            FieldError("", "Redis refused the result (maxmemory): the job store is full"),
            "the result could not be stored: the job store is full; send the request again later",
        )


class NotRun(TapeserveError):
    """An earlier graph of the same batch ended the batch (it crashed or ran out of time) before this one ran."""

    kind = "not-run"
    title = "This graph was not run"
    action = "Send this graph again."

    def __init__(self) -> None:
        super().__init__(
            FieldError("", "not run: an earlier graph of the batch ended the batch"),
            "an earlier graph of the batch stopped it; send this graph again",
        )


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
