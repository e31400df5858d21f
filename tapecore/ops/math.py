"""Exponentials, logarithms, trigonometric and special functions: element-wise, floats only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..opspec import (
    Example,
    OpSpec,
    Sample,
    ShapeError,
    TensorInfo,
    elementwise,
    require_float,
    same_as_input,
)

ANY = Sample((2, 3))
POS = Sample((2, 3), low=0.5, high=2.0)  # log's domain, lgamma away from its poles
UNIT = Sample((2, 3), low=-0.9, high=0.9)  # inside (-1, 1), away from the ends: asin, acos, atanh


def float_elementwise(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    """Shape rule of element-wise binary ops on floats, with broadcasting."""
    out = elementwise(inputs, attrs)
    require_float(inputs, 0)
    return out


def lgamma_shape(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    """Shape rule of lgamma: floats, except bfloat16."""
    # TF 2.21 registers Lgamma for float16, float32 and float64 only; bfloat16 fails at run
    # time with NotFoundError, so it is refused here with a message that says why.
    if inputs[0].dtype == "bfloat16":
        raise ShapeError("has no bfloat16 kernel in TensorFlow; use float16, float32 or float64", input=0)
    return same_as_input(inputs, attrs)


OPS = [
    OpSpec(
        name="exp",
        doc="e ** x, element-wise.",
        fn=lambda tf, x: tf.exp(x),
        infer=same_as_input,
        aliases=("math.exp",),
        category="math",
        examples=(Example((ANY,)),),
    ),
    OpSpec(
        name="math.expm1",
        doc="e ** x - 1, element-wise, accurate near 0.",
        fn=lambda tf, x: tf.math.expm1(x),
        infer=same_as_input,
        category="math",
        examples=(Example((ANY,)),),
    ),
    OpSpec(
        name="math.log",
        doc="Natural logarithm, element-wise.",
        fn=lambda tf, x: tf.math.log(x),
        infer=same_as_input,
        category="math",
        examples=(Example((POS,)),),
    ),
    OpSpec(
        name="math.log1p",
        doc="log(1 + x), element-wise, accurate near 0.",
        fn=lambda tf, x: tf.math.log1p(x),
        infer=same_as_input,
        category="math",
        examples=(Example((Sample((2, 3), low=-0.5, high=2.0),)),),
    ),
    OpSpec(
        name="math.sin",
        doc="Sine, element-wise (radians).",
        fn=lambda tf, x: tf.math.sin(x),
        infer=same_as_input,
        aliases=("sin",),
        category="math",
        examples=(Example((ANY,)),),
    ),
    OpSpec(
        name="cos",
        doc="Cosine, element-wise (radians).",
        fn=lambda tf, x: tf.cos(x),
        infer=same_as_input,
        aliases=("math.cos",),
        category="math",
        examples=(Example((ANY,)),),
    ),
    OpSpec(
        name="tan",
        doc="Tangent, element-wise (radians).",
        fn=lambda tf, x: tf.tan(x),
        infer=same_as_input,
        aliases=("math.tan",),
        category="math",
        examples=(Example((Sample((2, 3), low=-1.2, high=1.2),)),),  # away from the poles at ±pi/2
    ),
    OpSpec(
        name="asin",
        doc="Inverse sine, element-wise, for x in [-1, 1].",
        fn=lambda tf, x: tf.asin(x),
        infer=same_as_input,
        aliases=("math.asin",),
        category="math",
        examples=(Example((UNIT,)),),
    ),
    OpSpec(
        name="acos",
        doc="Inverse cosine, element-wise, for x in [-1, 1].",
        fn=lambda tf, x: tf.acos(x),
        infer=same_as_input,
        aliases=("math.acos",),
        category="math",
        examples=(Example((UNIT,)),),
    ),
    OpSpec(
        name="atan",
        doc="Inverse tangent, element-wise.",
        fn=lambda tf, x: tf.atan(x),
        infer=same_as_input,
        aliases=("math.atan",),
        category="math",
        examples=(Example((ANY,)),),
    ),
    OpSpec(
        name="math.atan2",
        doc="The angle of the point (x, y), element-wise with broadcasting: atan(y / x) by quadrant.",
        fn=lambda tf, y, x: tf.math.atan2(y, x),
        infer=float_elementwise,
        inputs=("y", "x"),
        aliases=("atan2",),
        category="math",
        # x > 0 keeps the points off the branch cut along the negative x axis.
        examples=(Example((ANY, Sample((3,), low=0.5, high=2.0))),),
    ),
    OpSpec(
        name="sinh",
        doc="Hyperbolic sine, element-wise.",
        fn=lambda tf, x: tf.sinh(x),
        infer=same_as_input,
        aliases=("math.sinh",),
        category="math",
        examples=(Example((ANY,)),),
    ),
    OpSpec(
        name="cosh",
        doc="Hyperbolic cosine, element-wise.",
        fn=lambda tf, x: tf.cosh(x),
        infer=same_as_input,
        aliases=("math.cosh",),
        category="math",
        examples=(Example((ANY,)),),
    ),
    OpSpec(
        name="tanh",
        doc="Hyperbolic tangent, element-wise.",
        fn=lambda tf, x: tf.tanh(x),
        infer=same_as_input,
        aliases=("math.tanh", "nn.tanh"),
        category="math",
        examples=(Example((ANY,)),),
    ),
    OpSpec(
        name="asinh",
        doc="Inverse hyperbolic sine, element-wise.",
        fn=lambda tf, x: tf.asinh(x),
        infer=same_as_input,
        aliases=("math.asinh",),
        category="math",
        examples=(Example((ANY,)),),
    ),
    OpSpec(
        name="acosh",
        doc="Inverse hyperbolic cosine, element-wise, for x >= 1.",
        fn=lambda tf, x: tf.acosh(x),
        infer=same_as_input,
        aliases=("math.acosh",),
        category="math",
        examples=(Example((Sample((2, 3), low=1.2, high=3.0),)),),
    ),
    OpSpec(
        name="atanh",
        doc="Inverse hyperbolic tangent, element-wise, for x in (-1, 1).",
        fn=lambda tf, x: tf.atanh(x),
        infer=same_as_input,
        aliases=("math.atanh",),
        category="math",
        examples=(Example((UNIT,)),),
    ),
    OpSpec(
        name="math.erf",
        doc="Gauss error function, element-wise.",
        fn=lambda tf, x: tf.math.erf(x),
        infer=same_as_input,
        category="math",
        examples=(Example((ANY,)),),
    ),
    OpSpec(
        name="math.lgamma",
        doc="log |Gamma(x)|, element-wise.",
        fn=lambda tf, x: tf.math.lgamma(x),
        infer=lgamma_shape,
        category="math",
        examples=(Example((POS,)),),
    ),
]
