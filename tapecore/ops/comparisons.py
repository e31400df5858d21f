"""Comparisons and logical ops: broadcasting, bool results, no gradients."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..opspec import Example, OpSpec, Sample, ShapeError, TensorInfo, broadcast_shapes, comparison
from .arithmetic import require_numeric

# Values that tie in places, so that every comparison is true somewhere and false somewhere.
X = Sample(value=[[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])
Y = Sample(value=[0.5, 0.25, -0.75])
INTS = Sample((2, 3), "int32", 0, 3)
BOOLS = Sample((2, 3), "bool")


def ordered_comparison(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    """Shape rule of <, <=, >, >=: as `comparison`, but TF does not order bools."""
    out = comparison(inputs, attrs)
    require_numeric(inputs, 0)
    return out


def logical(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    """Shape rule of logical ops: bool inputs, broadcast, bool result."""
    for i, t in enumerate(inputs):
        if t.dtype != "bool":
            raise ShapeError(f"needs a bool tensor, not {t.dtype}", input=i)
    return [TensorInfo(broadcast_shapes(*(t.shape for t in inputs)), "bool")]


OPS = [
    OpSpec(
        name="equal",
        doc="x == y, element-wise with broadcasting.",
        fn=lambda tf, x, y: tf.equal(x, y),
        infer=comparison,
        inputs=("x", "y"),
        aliases=("math.equal",),
        category="comparison",
        differentiable=False,
        examples=(Example((X, Y)), Example((INTS, INTS)), Example((BOOLS, BOOLS))),
    ),
    OpSpec(
        name="not_equal",
        doc="x != y, element-wise with broadcasting.",
        fn=lambda tf, x, y: tf.not_equal(x, y),
        infer=comparison,
        inputs=("x", "y"),
        aliases=("math.not_equal",),
        category="comparison",
        differentiable=False,
        examples=(Example((X, Y)), Example((BOOLS, BOOLS))),
    ),
    OpSpec(
        name="greater",
        doc="x > y, element-wise with broadcasting.",
        fn=lambda tf, x, y: tf.greater(x, y),
        infer=ordered_comparison,
        inputs=("x", "y"),
        aliases=("math.greater",),
        category="comparison",
        differentiable=False,
        examples=(Example((X, Y)), Example((INTS, INTS))),
    ),
    OpSpec(
        name="greater_equal",
        doc="x >= y, element-wise with broadcasting.",
        fn=lambda tf, x, y: tf.greater_equal(x, y),
        infer=ordered_comparison,
        inputs=("x", "y"),
        aliases=("math.greater_equal",),
        category="comparison",
        differentiable=False,
        examples=(Example((X, Y)),),
    ),
    OpSpec(
        name="less",
        doc="x < y, element-wise with broadcasting.",
        fn=lambda tf, x, y: tf.less(x, y),
        infer=ordered_comparison,
        inputs=("x", "y"),
        aliases=("math.less",),
        category="comparison",
        differentiable=False,
        examples=(Example((X, Y)),),
    ),
    OpSpec(
        name="less_equal",
        doc="x <= y, element-wise with broadcasting.",
        fn=lambda tf, x, y: tf.less_equal(x, y),
        infer=ordered_comparison,
        inputs=("x", "y"),
        aliases=("math.less_equal",),
        category="comparison",
        differentiable=False,
        examples=(Example((X, Y)),),
    ),
    OpSpec(
        name="logical_and",
        doc="x AND y, element-wise with broadcasting, on bools.",
        fn=lambda tf, x, y: tf.logical_and(x, y),
        infer=logical,
        inputs=("x", "y"),
        aliases=("math.logical_and",),
        category="logical",
        differentiable=False,
        examples=(Example((BOOLS, Sample((3,), "bool"))),),
    ),
    OpSpec(
        name="logical_or",
        doc="x OR y, element-wise with broadcasting, on bools.",
        fn=lambda tf, x, y: tf.logical_or(x, y),
        infer=logical,
        inputs=("x", "y"),
        aliases=("math.logical_or",),
        category="logical",
        differentiable=False,
        examples=(Example((BOOLS, Sample((3,), "bool"))),),
    ),
    OpSpec(
        name="logical_not",
        doc="NOT x, element-wise, on bools.",
        fn=lambda tf, x: tf.logical_not(x),
        infer=logical,
        category="logical",
        aliases=("math.logical_not",),
        differentiable=False,
        examples=(Example((BOOLS,)),),
    ),
]
