"""Arithmetic ops: element-wise, with broadcasting where TensorFlow broadcasts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..dtypes import INT_DTYPES
from ..opspec import Example, OpSpec, Sample, ShapeError, TensorInfo, common_dtype, elementwise, same_as_input

POS = Sample((2, 3), low=0.5, high=2.0)  # positive, for divisors and bases
ANY = Sample((2, 3))
# Both signs, none within 0.2 of 0, the kink of abs.
SIGNED = Sample(value=[[-1.5, 0.7, -0.3], [2.0, -1.1, 0.4]])
# maximum/minimum: x and y differ by at least 0.3 everywhere (no ties), and each wins somewhere.
MAX_X = Sample(value=[[-1.5, 0.3, 1.2], [0.8, -0.6, 2.0]])
MAX_Y = Sample(value=[0.5, -0.2, 1.7])


def require_numeric(inputs: Sequence[TensorInfo], *which: int) -> None:
    """Raise ShapeError if the given inputs (default: all) are bool: TF has no arithmetic on bools."""
    for i in which or range(len(inputs)):
        if inputs[i].dtype == "bool":
            raise ShapeError("needs a numeric tensor, not bool", input=i)


def numeric(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    """Shape rule of element-wise arithmetic: broadcast, one numeric dtype."""
    out = elementwise(inputs, attrs)
    require_numeric(inputs, 0)
    return out


def numeric_unary(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    """Shape rule of unary ops that take integers as well as floats."""
    require_numeric(inputs, 0)
    return [inputs[0]]


def true_division(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    """Shape rule of divide: as `numeric`, but TF divides int32 and int64 in float64."""
    (out,) = numeric(inputs, attrs)
    return [TensorInfo(out.shape, "float64")] if out.dtype in INT_DTYPES else [out]


def same_shape_sum(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    """Shape rule of add_n: every input has the first one's shape and dtype (it never broadcasts)."""
    common_dtype(inputs)
    require_numeric(inputs, 0)
    first = inputs[0].shape
    for i, t in enumerate(inputs[1:], start=1):
        if t.shape != first:
            raise ShapeError(f"shape {list(t.shape)} does not match input 0's {list(first)}", input=i)
    return [inputs[0]]


OPS = [
    OpSpec(
        name="add",
        doc="x + y, element-wise with broadcasting.",
        fn=lambda tf, x, y: tf.add(x, y),
        infer=numeric,
        inputs=("x", "y"),
        aliases=("math.add",),
        category="arithmetic",
        examples=(Example((ANY, Sample((3,)))),),
    ),
    OpSpec(
        name="subtract",
        doc="x - y, element-wise with broadcasting.",
        fn=lambda tf, x, y: tf.subtract(x, y),
        infer=numeric,
        inputs=("x", "y"),
        aliases=("math.subtract",),
        category="arithmetic",
        examples=(Example((ANY, ANY)),),
    ),
    OpSpec(
        name="multiply",
        doc="x * y, element-wise with broadcasting.",
        fn=lambda tf, x, y: tf.multiply(x, y),
        infer=numeric,
        inputs=("x", "y"),
        aliases=("math.multiply",),
        category="arithmetic",
        examples=(Example((ANY, Sample(()))),),
    ),
    OpSpec(
        name="divide",
        doc="x / y, element-wise with broadcasting (true division: integers give float64).",
        fn=lambda tf, x, y: tf.divide(x, y),
        infer=true_division,
        inputs=("x", "y"),
        aliases=("math.divide",),
        category="arithmetic",
        examples=(
            Example((ANY, POS)),
            Example((Sample((2, 3), "int32", -5, 5), Sample((3,), "int32", 1, 4))),
        ),
    ),
    OpSpec(
        name="pow",
        doc="x ** y, element-wise with broadcasting.",
        fn=lambda tf, x, y: tf.pow(x, y),
        infer=numeric,
        inputs=("x", "y"),
        aliases=("math.pow",),
        category="arithmetic",
        examples=(Example((POS, ANY)),),
    ),
    OpSpec(
        name="negative",
        doc="-x, element-wise.",
        fn=lambda tf, x: tf.negative(x),
        infer=numeric_unary,
        aliases=("math.negative",),
        category="arithmetic",
        examples=(Example((ANY,)),),
    ),
    OpSpec(
        name="square",
        doc="x * x, element-wise.",
        fn=lambda tf, x: tf.square(x),
        infer=numeric_unary,
        aliases=("math.square",),
        category="arithmetic",
        examples=(Example((ANY,)),),
    ),
    OpSpec(
        name="sqrt",
        doc="Square root, element-wise.",
        fn=lambda tf, x: tf.sqrt(x),
        infer=same_as_input,
        aliases=("math.sqrt",),
        category="arithmetic",
        examples=(Example((POS,)),),
    ),
    OpSpec(
        name="math.rsqrt",
        doc="1 / sqrt(x), element-wise.",
        fn=lambda tf, x: tf.math.rsqrt(x),
        infer=same_as_input,
        category="arithmetic",
        examples=(Example((POS,)),),
    ),
    OpSpec(
        name="math.reciprocal",
        doc="1 / x, element-wise (floats only: TF has no integer kernel).",
        fn=lambda tf, x: tf.math.reciprocal(x),
        infer=same_as_input,
        category="arithmetic",
        examples=(Example((SIGNED,)),),
    ),
    OpSpec(
        name="abs",
        doc="Absolute value, element-wise.",
        fn=lambda tf, x: tf.abs(x),
        infer=numeric_unary,
        aliases=("math.abs",),
        category="arithmetic",
        examples=(Example((SIGNED,)), Example((Sample((4,), "int32", -3, 3),))),
    ),
    OpSpec(
        name="sign",
        doc="-1, 0 or 1 by the sign of x, element-wise.",
        fn=lambda tf, x: tf.sign(x),
        infer=numeric_unary,
        aliases=("math.sign",),
        category="arithmetic",
        differentiable=False,
        examples=(Example((ANY,)),),
    ),
    OpSpec(
        name="maximum",
        doc="The larger of x and y, element-wise with broadcasting.",
        fn=lambda tf, x, y: tf.maximum(x, y),
        infer=numeric,
        inputs=("x", "y"),
        aliases=("math.maximum",),
        category="arithmetic",
        examples=(Example((MAX_X, MAX_Y)),),
    ),
    OpSpec(
        name="minimum",
        doc="The smaller of x and y, element-wise with broadcasting.",
        fn=lambda tf, x, y: tf.minimum(x, y),
        infer=numeric,
        inputs=("x", "y"),
        aliases=("math.minimum",),
        category="arithmetic",
        examples=(Example((MAX_X, MAX_Y)),),
    ),
    OpSpec(
        name="math.squared_difference",
        doc="(x - y) ** 2, element-wise with broadcasting.",
        fn=lambda tf, x, y: tf.math.squared_difference(x, y),
        infer=numeric,
        inputs=("x", "y"),
        category="arithmetic",
        examples=(Example((ANY, Sample((3,)))),),
    ),
    OpSpec(
        name="add_n",
        doc="Sum of one or more tensors of the same shape and dtype.",
        fn=lambda tf, *inputs: tf.add_n(list(inputs)),
        infer=same_shape_sum,
        inputs=("inputs",),
        variadic=True,
        aliases=("math.add_n",),
        category="arithmetic",
        examples=(Example((ANY, ANY, ANY)), Example((ANY,))),
    ),
    OpSpec(
        name="math.floor",
        doc="Largest integer not greater than x, element-wise.",
        fn=lambda tf, x: tf.math.floor(x),
        infer=same_as_input,
        aliases=("floor",),
        category="arithmetic",
        differentiable=False,
        examples=(Example((ANY,)),),
    ),
    OpSpec(
        name="math.ceil",
        doc="Smallest integer not less than x, element-wise.",
        fn=lambda tf, x: tf.math.ceil(x),
        infer=same_as_input,
        category="arithmetic",
        differentiable=False,
        examples=(Example((ANY,)),),
    ),
    OpSpec(
        name="round",
        doc="Nearest integer, halves to even, element-wise (integers pass through).",
        fn=lambda tf, x: tf.round(x),
        infer=numeric_unary,
        aliases=("math.round",),
        category="arithmetic",
        differentiable=False,
        examples=(Example((ANY,)), Example((Sample((4,), "int64", -3, 3),))),
    ),
]
