"""The gradient engine: request document in, result document out. Imports TensorFlow."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from tapecore.errors import FieldError, LimitExceeded, MemoryLimitExceeded, TapeserveError
from tapecore.graph import GradientRequest
from tapecore.limits import DEFAULT_LIMITS, Limits
from tapecore.ops import REGISTRY
from tapecore.parsecache import REQUESTS
from tapecore.registry import Registry

from .cache import FUNCTIONS
from .codec import dumps, least_json_bytes, python_document
from .execute import run_request


def run_json(
    raw: bytes | str | dict[str, Any],
    *,
    registry: Registry = REGISTRY,
    limits: Limits = DEFAULT_LIMITS,
    device: str | None = None,
    check_values: bool = True,
    batch_bytes: int = 0,
) -> bytes:
    """Check a request (JSON text, or already parsed), run it inside a tape, return the result as JSON.

    `check_values=False` skips the element-by-element check of tensor values, for documents
    the API has already checked; everything else is checked again. A result over
    max_result_bytes (less the `batch_bytes` a batch's earlier slots hold) is refused here.
    """
    result = run_request(_checked(raw, registry, limits, check_values), device=device)
    return encode_within(result, limits.max_result_bytes, batch_bytes)


def encode_within(result: dict[str, Any], max_bytes: int, batch_bytes: int = 0) -> bytes:
    """Write a result document as JSON; raise LimitExceeded if it is (or must be) over `max_bytes`.

    The validator's estimate should have refused it already: this is the backstop, so that
    no result over max_result_bytes is ever stored. The bound from the arrays' shapes spares
    writing one that cannot fit. In a batch, `batch_bytes` are taken already.
    """
    least = least_json_bytes(result)
    if batch_bytes + least > max_bytes:
        raise _result_too_large(True, least, max_bytes, batch_bytes)
    out = dumps(result)
    if batch_bytes + len(out) > max_bytes:
        raise _result_too_large(False, len(out), max_bytes, batch_bytes)
    return out


def _result_too_large(least: bool, size: int, max_bytes: int, batch_bytes: int) -> LimitExceeded:
    bound = "at least " if least else ""
    what = f"the result is {bound}{size} bytes"
    if batch_bytes:
        what = f"with this result ({bound}{size} bytes) the batch's results are {bound}{batch_bytes + size} bytes"
    message = f"{what} as JSON, over the limit max_result_bytes = {max_bytes}"
    return LimitExceeded(
        FieldError("", message, limit="max_result_bytes", maximum=max_bytes, estimate=batch_bytes + size)
    )


BATCH_FRAME = len(b'{"results":[]}')
SLOT_FRAME = len(b'{"status":"finished","result":},')


def run_batch_json(
    raw: bytes | str | list[Any],
    *,
    registry: Registry = REGISTRY,
    limits: Limits = DEFAULT_LIMITS,
    device: str | None = None,
    check_values: bool = True,
) -> bytes:
    """Run a batch of `{"graph": doc}` or `{"problem": ...}` (refused by the API); return `{"results": [...]}`."""
    slots = batch_slots(raw, registry=registry, limits=limits, device=device, check_values=check_values)
    return b'{"results":[' + b",".join(slots) + b"]}"


def batch_slots(
    raw: bytes | str | list[Any],
    *,
    registry: Registry = REGISTRY,
    limits: Limits = DEFAULT_LIMITS,
    device: str | None = None,
    check_values: bool = True,
) -> Iterator[bytes]:
    """Yield each item's slot of a batch as JSON, in order, as it is run.

    Each graph's failure is its own slot's problem; the batch goes on. Results are spliced
    in as the JSON each graph produced, never parsed again. The whole batch document counts
    against max_result_bytes: a result that does not fit in what the slots before it left
    fails its own slot. Running out of memory ends the batch (MemoryLimitExceeded): the
    process is to be replaced.
    """
    items = orjson.loads(raw) if isinstance(raw, bytes | str) else raw
    taken = BATCH_FRAME
    for item in items:
        if "problem" in item:
            slot = orjson.dumps({"status": "failed", "error": item["problem"]})
        else:
            try:
                out = run_json(
                    item["graph"],
                    registry=registry,
                    limits=limits,
                    device=device,
                    check_values=check_values,
                    batch_bytes=taken + SLOT_FRAME,
                )
                slot = orjson.dumps({"status": "finished", "result": orjson.Fragment(out)})
            except MemoryLimitExceeded:
                raise
            except TapeserveError as exc:
                slot = orjson.dumps({"status": "failed", "error": exc.problem()})
        taken += len(slot) + 1
        yield slot


def describe(doc: Any) -> dict[str, Any]:
    """What the worker's one log line per job says about a document: its mode and op count."""
    if not isinstance(doc, dict):
        return {"mode": "batch", "ops": len(doc) if isinstance(doc, list) else 0}
    ops = doc.get("ops")
    return {"mode": doc.get("mode", "gradient"), "ops": len(ops) if isinstance(ops, list) else "expr"}


def run_task(
    kind: str,
    payload: Any,
    *,
    limits: Limits = DEFAULT_LIMITS,
    device: str | None = None,
    check_values: bool = True,
) -> bytes:
    """Run a worker's task: one graph ("graph") or a batch ("batch"), parsed; return the result JSON."""
    if kind == "batch":
        return run_batch_json(payload, limits=limits, device=device, check_values=check_values)
    return run_json(payload, limits=limits, device=device, check_values=check_values)


def cache_stats() -> dict[str, int]:
    """The compiled-function cache's counts, for the worker's metrics."""
    stats = FUNCTIONS.stats
    return {"hits": stats.hits, "misses": stats.misses, "compiles": stats.compiles, "fallbacks": stats.fallbacks}


def run_document(
    doc: Any,
    *,
    registry: Registry = REGISTRY,
    limits: Limits = DEFAULT_LIMITS,
    device: str | None = None,
) -> dict[str, Any]:
    """Check a request document (parsed, or JSON text), run it inside a tape, and return the result document.

    The document `run_json` writes, built as Python objects with no JSON text in between
    (the MLP's: 0.3 ms, not 2.0 to write and read back). Its numbers are the result's exact
    values: float32 0.1 is 0.10000000149011612 here, where JSON text has "0.1", the shortest
    decimal that reads back as the same float32.
    """
    return python_document(run_request(_checked(doc, registry, limits), device=device))


def _checked(raw: Any, registry: Registry, limits: Limits, check_values: bool = True) -> GradientRequest:
    """The checked request of a document (JSON text, or already parsed)."""
    doc = orjson.loads(raw) if isinstance(raw, bytes | str) else raw
    return REQUESTS.parse(doc, registry, limits, check_values=check_values)


__all__ = [
    "batch_slots",
    "cache_stats",
    "describe",
    "encode_within",
    "run_document",
    "run_json",
    "run_request",
    "run_task",
]
