"""The registry's table, one module per family of ops."""

from __future__ import annotations

from ..registry import Registry
from . import activations, arithmetic, comparisons, linalg, math, nn, reductions, selection, shapes

REGISTRY = Registry(
    [
        *arithmetic.OPS,
        *math.OPS,
        *activations.OPS,
        *reductions.OPS,
        *linalg.OPS,
        *shapes.OPS,
        *selection.OPS,
        *comparisons.OPS,
        *nn.OPS,
    ]
)
