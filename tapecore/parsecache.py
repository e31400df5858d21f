"""Checked graphs reused for requests that differ only in their tensors' values.

A service sees the same graph again and again with new values (a training loop, a batch of
similar graphs). Everything but the values — ops, attrs, names, shapes, dtypes, mode — is
summarised in a skeleton; on a hit the ops are not checked, ordered and shape-inferred
again: only the new values are checked (docs/performance.md has the figures).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import orjson
from cachetools import LRUCache

from .errors import ErrorCollector
from .graph import GradientRequest
from .limits import Limits
from .modes import mode_fields
from .registry import Registry
from .request import parse_request, parse_tensors

CAPACITY = 512  # checked graphs kept per process; each is a few KB per op
VALUE_FIELDS = ("tensors", "output_gradients", "tangents")


def _signature(tensor: Any) -> Any:
    """What of a tensor document shapes the graph: its form's keys, dtype and shape (not values)."""
    if not isinstance(tensor, dict):
        return ["bare", _value_shape(tensor)]
    keys = sorted(tensor)
    shape = tensor.get("shape")
    if "value" in tensor:
        return [keys, tensor.get("dtype"), shape, _value_shape(tensor["value"])]
    return [keys, tensor.get("dtype"), shape]


def _value_shape(value: Any) -> list[int]:
    shape: list[int] = []
    while isinstance(value, list) and len(shape) < 64:
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def skeleton(doc: Any) -> str | None:
    """A digest of everything in a request but its values, or None if it cannot be made."""
    if not isinstance(doc, dict) or not isinstance(doc.get("tensors"), dict):
        return None
    tangents = doc.get("tangents")
    parts = [
        {k: v for k, v in doc.items() if k not in VALUE_FIELDS},
        {name: _signature(t) for name, t in doc["tensors"].items()},
        _signature(doc["output_gradients"]) if "output_gradients" in doc else None,
        {n: _signature(t) for n, t in tangents.items()} if isinstance(tangents, dict) else tangents,
    ]
    try:
        return hashlib.blake2b(orjson.dumps(parts), digest_size=16).hexdigest()
    except (TypeError, orjson.JSONEncodeError):
        return None


class RequestCache:
    """A bounded LRU of checked requests by skeleton, for one registry and one set of limits."""

    def __init__(self, capacity: int = CAPACITY):
        self.capacity = capacity
        self._entries: LRUCache[tuple[int, Limits, str], GradientRequest] = LRUCache(maxsize=capacity)
        self.hits = 0
        self.misses = 0

    def parse(self, doc: Any, registry: Registry, limits: Limits, *, check_values: bool = True) -> GradientRequest:
        """Check a request as `parse_request` does, reusing the checked graph of its skeleton."""
        digest = skeleton(doc)
        if digest is None:
            return parse_request(doc, registry, limits, check_values=check_values)
        key = (id(registry), limits, digest)
        cached = self._entries.get(key)
        if cached is None:
            self.misses += 1
            request = parse_request(doc, registry, limits, check_values=check_values)
            # Keep the graph, not the values: a hit reads its own (1M-element tensors add up).
            self._entries[key] = request.without_values()
            return request
        self.hits += 1
        errors = ErrorCollector()
        tensors = parse_tensors(doc["tensors"], errors, limits, check_values)
        request = dataclasses.replace(cached, tensors=tensors, output_gradients=None, tangents=None)
        if not errors:
            mode_fields(doc, request, limits, errors)
        errors.raise_if_any()
        return request


REQUESTS = RequestCache()
