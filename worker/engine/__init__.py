"""The gradient engine: request document in, result document out. Imports TensorFlow."""

from __future__ import annotations

from typing import Any

import orjson

from worker.graph.limits import DEFAULT_LIMITS, Limits
from worker.graph.ops import REGISTRY
from worker.graph.registry import Registry
from worker.graph.request import parse_request

from .codec import dumps
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
    doc = orjson.loads(raw) if isinstance(raw, bytes | str) else raw
    request = parse_request(doc, registry, limits, check_values=check_values)
    return dumps(run_request(request, device=device))


def run_document(
    doc: Any,
    *,
    registry: Registry = REGISTRY,
    limits: Limits = DEFAULT_LIMITS,
    device: str | None = None,
) -> dict[str, Any]:
    """Check a request document, run it inside a tape, and return the result document."""
    result: dict[str, Any] = orjson.loads(run_json(doc, registry=registry, limits=limits, device=device))
    return result


__all__ = ["run_document", "run_json", "run_request"]
