"""The gradient engine: request document in, result document out. Imports TensorFlow."""

from __future__ import annotations

from typing import Any

import orjson

from worker.graph.errors import TapeserveError
from worker.graph.graph import GradientRequest
from worker.graph.limits import DEFAULT_LIMITS, Limits
from worker.graph.ops import REGISTRY
from worker.graph.parsecache import REQUESTS
from worker.graph.registry import Registry

from .cache import FUNCTIONS
from .codec import dumps, python_document
from .execute import run_request


def run_json(
    raw: bytes | str | dict[str, Any],
    *,
    registry: Registry = REGISTRY,
    limits: Limits = DEFAULT_LIMITS,
    device: str | None = None,
    check_values: bool = True,
) -> bytes:
    """Check a request (JSON text, or already parsed), run it inside a tape, return the result as JSON.

    `check_values=False` skips the element-by-element check of tensor values, for documents
    the API has already checked; everything else is checked again.
    """
    return dumps(run_request(_checked(raw, registry, limits, check_values), device=device))


def run_batch_json(
    raw: bytes | str | list[Any],
    *,
    registry: Registry = REGISTRY,
    limits: Limits = DEFAULT_LIMITS,
    device: str | None = None,
    check_values: bool = True,
) -> bytes:
    """Run a batch: items `{"graph": doc}` or `{"problem": ...}` (refused by the API) -> `{"results": [...]}`.

    Each graph's failure is its own item's problem; the batch goes on. Results are spliced
    in as the JSON each graph produced, never parsed again.
    """
    items = orjson.loads(raw) if isinstance(raw, bytes | str) else raw
    results: list[dict[str, Any]] = []
    for item in items:
        if "problem" in item:
            results.append({"status": "failed", "error": item["problem"]})
            continue
        try:
            out = run_json(item["graph"], registry=registry, limits=limits, device=device, check_values=check_values)
            results.append({"status": "finished", "result": orjson.Fragment(out)})
        except TapeserveError as exc:
            results.append({"status": "failed", "error": exc.problem()})
    return orjson.dumps({"results": results})


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


__all__ = ["cache_stats", "describe", "run_batch_json", "run_document", "run_json", "run_request", "run_task"]
