"""Compiled functions for graphs seen before, keyed by structure, shapes and dtypes.

The first time a structure is seen it runs eagerly: tracing costs ~50x one eager run, and
most graphs are never seen twice. From the second sight on it runs as a traced graph,
called as one op (execute.CompiledGraph; run_request measured on the 200-op chain: 0.04x
the eager time; on the contract's example 3: 0.17x). The cache is a bounded LRU with hit
and miss counts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from cachetools import LRUCache

from tapecore.graph import GradientRequest, Literal

CAPACITY = 128  # traced functions kept; each holds a TF graph (~100 KB for 200 ops)
COMPILE_AFTER = 2  # sightings of a structure before it is traced
SEEN_CAPACITY = 4096  # structures remembered as seen once, to count the second sighting


def structure_key(req: GradientRequest, device: str) -> str:
    """Return a digest of everything that shapes the traced graph (not the input values)."""
    parts: list[Any] = [
        device,
        req.mode,
        req.order,
        req.unconnected,
        req.target_is_list,
        [str(t) for t in req.targets],
        req.sources,
        [(n, t.dtype, t.shape) for n, t in req.tensors.items()],
        [(s.dtype, s.shape) for s in req.output_gradients or []],
        [(n, s.dtype, s.shape) for n, s in sorted((req.tangents or {}).items())],
    ]
    for node in req.nodes:
        inputs = [(i.value, i.info.dtype) if isinstance(i, Literal) else str(i) for i in node.inputs]
        parts.append((node.id, node.spec.name, inputs, sorted(node.attrs.items())))
    return hashlib.blake2b(orjson.dumps(parts), digest_size=16).hexdigest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    compiles: int = 0
    fallbacks: int = 0  # compiled runs that failed and were re-run eagerly


class CompiledFunctions:
    """A bounded LRU of traced functions, compiled on a structure's second sighting."""

    def __init__(self, capacity: int = CAPACITY, compile_after: int = COMPILE_AFTER):
        self.capacity = capacity
        self.compile_after = compile_after
        self._functions: LRUCache[str, Callable[..., Any]] = LRUCache(maxsize=capacity)
        self._seen: LRUCache[str, int] = LRUCache(maxsize=SEEN_CAPACITY)
        self._eager_only: set[str] = set()
        self.stats = CacheStats()

    def get(self, key: str) -> Callable[..., Any] | None:
        """Return the compiled function for this structure, or None (and count a sighting)."""
        fn = self._functions.get(key)
        if fn is not None:
            self.stats.hits += 1
            return fn
        self.stats.misses += 1
        return None

    def should_compile(self, key: str) -> bool:
        """Count a sighting; say whether this structure has now been seen often enough."""
        if key in self._eager_only:
            return False
        count = self._seen.pop(key, 0) + 1
        self._seen[key] = count
        return count >= self.compile_after

    def put(self, key: str, fn: Callable[..., Any]) -> None:
        self._functions[key] = fn
        self._seen.pop(key, None)
        self.stats.compiles += 1

    def mark_eager_only(self, key: str) -> None:
        """Never compile this structure again (its compiled form failed where eager did not)."""
        self._functions.pop(key, None)
        self._eager_only.add(key)
        self.stats.fallbacks += 1

    def __len__(self) -> int:
        return len(self._functions)


FUNCTIONS = CompiledFunctions()
