"""The gradient engine: request document in, result document out. Imports TensorFlow."""

from __future__ import annotations

from typing import Any

from worker.graph.limits import DEFAULT_LIMITS, Limits
from worker.graph.ops import REGISTRY
from worker.graph.registry import Registry
from worker.graph.request import parse_request

from .execute import run_request


def run_document(
    doc: Any,
    *,
    registry: Registry = REGISTRY,
    limits: Limits = DEFAULT_LIMITS,
    device: str | None = None,
) -> dict[str, Any]:
    """Check a request document, run it inside a tape, and return the result document."""
    return run_request(parse_request(doc, registry, limits), device=device)


__all__ = ["run_document", "run_request"]
