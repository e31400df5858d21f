"""Reductions over axes, with `axis` (null for all) and `keepdims`, and cumulative scans."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import short_repr
from ..opspec import (
    AttrError,
    AttrSpec,
    Example,
    OpCost,
    OpSpec,
    Sample,
    ShapeError,
    TensorInfo,
    normalize_axis,
    reduced,
    require_float,
)


class NormOrder(AttrSpec):
    """`norm`'s `ord`: "euclidean", "fro" or a positive number.

    No attr kind holds a string or a number, so this attr checks its own values. The wire
    spells infinity "Infinity" (API.md), TensorFlow spells it `np.inf`: the max norm.
    """

    def check(self, value: Any) -> Any:
        if value in ("euclidean", "fro"):
            return value
        if value == "Infinity":
            return math.inf
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise AttrError(f'must be "euclidean", "fro" or a positive number, not {short_repr(value)}')
        return value

    def describe_type(self) -> str:
        return '"euclidean", "fro" or a positive number ("Infinity" for the max norm)'


AXIS = AttrSpec("axis", "axes", default=None, nullable=True, doc="axis or axes to reduce; null for all")
KEEPDIMS = AttrSpec("keepdims", "bool", default=False, doc="keep reduced axes with length 1")
SCAN_ATTRS = (
    AttrSpec("axis", "axis", default=0, doc="axis to scan along"),
    AttrSpec("exclusive", "bool", default=False, doc="leave each element out of its own result"),
    AttrSpec("reverse", "bool", default=False, doc="scan from the last element backwards"),
)
# TensorFlow's `keepdims=None` means False; the table says so plainly.
NORM_ATTRS = (
    NormOrder("ord", "string", default="euclidean", doc="the norm: euclidean, fro, 1, 2, Infinity or p > 0"),
    AttrSpec("axis", "axes", default=None, nullable=True, doc="null (all), an axis, or two axes (a matrix norm)"),
    KEEPDIMS,
)
MATRIX_NORMS = ("euclidean", "fro", 1, 2, math.inf)
SVD_DTYPES = ("float32", "float64")  # the matrix 2-norm runs an SVD, which has no 16-bit kernel

ANY = Sample((2, 3))
POS = Sample((2, 3), low=0.5, high=2.0)  # away from 0, where products and scans divide


def numeric_reduction(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    """Shape rule of reductions TF runs on numbers but not on bool."""
    if inputs[0].dtype == "bool":
        raise ShapeError("needs a numeric tensor, not bool", input=0)
    return _reduction(inputs, attrs)


def float_reduction(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    """Shape rule of reductions TF runs on floats only (exp, sqrt, division inside)."""
    require_float(inputs, 0)
    return _reduction(inputs, attrs)


def _reduction(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    # `normalize_axis` lets axis 0 through for a scalar; TF's reductions refuse it.
    if inputs[0].rank == 0 and attrs.get("axis") not in (None, []):
        raise ShapeError("a scalar has no axis to reduce", attr="axis")
    return reduced(inputs, attrs)


def _norm(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    order, axis = attrs["ord"], attrs["axis"]
    if isinstance(axis, list) and len(axis) == 2:
        if order not in MATRIX_NORMS:
            raise ShapeError("a matrix norm is euclidean, fro, 1, 2 or Infinity", attr="ord")
        if order == 2 and inputs[0].dtype not in SVD_DTYPES:
            raise ShapeError(f"the matrix 2-norm needs float32 or float64, not {inputs[0].dtype}", input=0)
    elif isinstance(axis, list):
        raise ShapeError("axis must be null, one axis, or two axes for a matrix norm", attr="axis")
    elif order == "fro":
        raise ShapeError('"fro" is a matrix norm: give two axes', attr="ord")
    return float_reduction(inputs, attrs)


def _norm_cost(inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> OpCost:
    """The matrix 2-norm runs an SVD per matrix (n^3, a workspace as large as the input); others read each element."""
    x = inputs[0]
    axis = attrs["axis"]
    if attrs["ord"] == 2 and isinstance(axis, list) and len(axis) == 2:
        rows, cols = x.shape[axis[0]] or 1, x.shape[axis[1]] or 1
        matrices = x.bound // (rows * cols)
        return OpCost(20 * matrices * rows * cols * min(rows, cols), scratch=2 * x.bound)
    return OpCost(2 * x.bound + outputs[0].bound)


def _prod_cost(inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> OpCost:
    """reduce_prod's gradient transposes the input and takes two cumulative products of it."""
    x = inputs[0]
    return OpCost(2 * x.bound + outputs[0].bound, scratch=4 * x.bound)


def _scan(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    x = inputs[0]
    if x.dtype == "bool":
        raise ShapeError("needs a numeric tensor, not bool", input=0)
    if x.rank == 0:
        raise ShapeError("a scalar has no axis to scan", input=0)
    normalize_axis(attrs["axis"], x.rank)
    return [x]


OPS = [
    OpSpec(
        name="reduce_sum",
        doc="Sum of elements across axes.",
        fn=lambda tf, x, axis=None, keepdims=False: tf.reduce_sum(x, axis=axis, keepdims=keepdims),
        infer=numeric_reduction,
        attrs=(AXIS, KEEPDIMS),
        aliases=("math.reduce_sum",),
        category="reduction",
        examples=(
            Example((ANY,)),
            Example((ANY,), {"axis": 1, "keepdims": True}),
        ),
    ),
    OpSpec(
        name="reduce_mean",
        doc="Mean of elements across axes.",
        fn=lambda tf, x, axis=None, keepdims=False: tf.reduce_mean(x, axis=axis, keepdims=keepdims),
        infer=numeric_reduction,
        attrs=(AXIS, KEEPDIMS),
        aliases=("math.reduce_mean",),
        category="reduction",
        examples=(
            Example((ANY,)),
            Example((Sample((2, 3, 2)),), {"axis": [0, -1], "keepdims": True}),
        ),
    ),
    OpSpec(
        name="reduce_prod",
        doc="Product of elements across axes.",
        fn=lambda tf, x, axis=None, keepdims=False: tf.reduce_prod(x, axis=axis, keepdims=keepdims),
        infer=numeric_reduction,
        attrs=(AXIS, KEEPDIMS),
        aliases=("math.reduce_prod",),
        cost=_prod_cost,
        category="reduction",
        examples=(
            Example((POS,)),
            Example((POS,), {"axis": 1}),
        ),
    ),
    OpSpec(
        name="reduce_max",
        doc="Maximum of elements across axes.",
        fn=lambda tf, x, axis=None, keepdims=False: tf.reduce_max(x, axis=axis, keepdims=keepdims),
        infer=numeric_reduction,
        attrs=(AXIS, KEEPDIMS),
        aliases=("math.reduce_max",),
        category="reduction",
        examples=(
            Example((ANY,)),
            Example((ANY,), {"axis": 0, "keepdims": True}),
        ),
    ),
    OpSpec(
        name="reduce_min",
        doc="Minimum of elements across axes.",
        fn=lambda tf, x, axis=None, keepdims=False: tf.reduce_min(x, axis=axis, keepdims=keepdims),
        infer=numeric_reduction,
        attrs=(AXIS, KEEPDIMS),
        aliases=("math.reduce_min",),
        category="reduction",
        examples=(
            Example((ANY,)),
            Example((ANY,), {"axis": -1}),
        ),
    ),
    OpSpec(
        name="reduce_logsumexp",
        doc="log(sum(exp(x))) across axes, computed stably.",
        fn=lambda tf, x, axis=None, keepdims=False: tf.reduce_logsumexp(x, axis=axis, keepdims=keepdims),
        infer=float_reduction,
        attrs=(AXIS, KEEPDIMS),
        aliases=("math.reduce_logsumexp",),
        category="reduction",
        examples=(
            Example((ANY,)),
            Example((ANY,), {"axis": 1, "keepdims": True}),
        ),
    ),
    OpSpec(
        name="math.reduce_std",
        doc="Standard deviation of elements across axes.",
        fn=lambda tf, x, axis=None, keepdims=False: tf.math.reduce_std(x, axis=axis, keepdims=keepdims),
        infer=float_reduction,
        attrs=(AXIS, KEEPDIMS),
        category="reduction",
        examples=(
            Example((ANY,)),
            Example((ANY,), {"axis": 0}),
        ),
    ),
    OpSpec(
        name="math.reduce_variance",
        doc="Variance of elements across axes.",
        fn=lambda tf, x, axis=None, keepdims=False: tf.math.reduce_variance(x, axis=axis, keepdims=keepdims),
        infer=float_reduction,
        attrs=(AXIS, KEEPDIMS),
        category="reduction",
        examples=(
            Example((ANY,)),
            Example((ANY,), {"axis": 1, "keepdims": True}),
        ),
    ),
    OpSpec(
        name="norm",
        doc="Vector norm over an axis (or all), or matrix norm over two axes.",
        fn=lambda tf, x, ord="euclidean", axis=None, keepdims=False: tf.norm(x, ord=ord, axis=axis, keepdims=keepdims),
        infer=_norm,
        attrs=NORM_ATTRS,
        aliases=("linalg.norm",),
        cost=_norm_cost,
        category="reduction",
        examples=(
            Example((ANY,)),
            # Mixed signs, none near 0 where |x| has its kink.
            Example((Sample(value=[[1.5, -0.7, 0.9], [-1.2, 0.4, -1.9]]),), {"ord": 1, "axis": 1}),
            Example((ANY,), {"ord": 3.5, "axis": 0, "keepdims": True}),
            Example((ANY,), {"ord": "fro", "axis": [0, 1]}),
            Example((Sample((2, 3, 3)),), {"ord": 2, "axis": [-2, -1]}),
            Example((ANY,), {"ord": math.inf, "axis": [1, 0], "keepdims": True}),
        ),
    ),
    OpSpec(
        name="math.cumsum",
        doc="Cumulative sum along an axis.",
        fn=lambda tf, x, axis=0, exclusive=False, reverse=False: tf.math.cumsum(
            x, axis=axis, exclusive=exclusive, reverse=reverse
        ),
        infer=_scan,
        attrs=SCAN_ATTRS,
        aliases=("cumsum",),
        category="reduction",
        examples=(
            Example((ANY,), {"axis": 1}),
            Example((ANY,), {"exclusive": True, "reverse": True}),
        ),
    ),
    OpSpec(
        name="math.cumprod",
        doc="Cumulative product along an axis.",
        fn=lambda tf, x, axis=0, exclusive=False, reverse=False: tf.math.cumprod(
            x, axis=axis, exclusive=exclusive, reverse=reverse
        ),
        infer=_scan,
        attrs=SCAN_ATTRS,
        category="reduction",
        examples=(
            Example((POS,), {"axis": 1}),
            Example((POS,), {"axis": -2, "exclusive": True, "reverse": True}),
        ),
    ),
]
