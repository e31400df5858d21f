"""Activation functions: element-wise non-linearities, and softmax along an axis."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..dtypes import INT_DTYPES
from ..opspec import AttrSpec, Example, OpSpec, Sample, ShapeError, TensorInfo, normalize_axis, same_as_input
from .arithmetic import numeric_unary, require_numeric

ANY = Sample((2, 3))
# Both signs, none within 0.2 of 0, where relu, elu, selu and leaky_relu have their kinks.
SIGNED = Sample(value=[[-1.7, -0.6, -0.2], [0.3, 0.9, 1.8]])
# relu6 bends at 0 and at 6: values on all three pieces, away from both bends.
AROUND_0_AND_6 = Sample(value=[[-1.5, 0.5, 3.0], [5.5, 6.5, 8.0]])

SOFTMAX_AXIS = AttrSpec(
    "axis", "axis", default=None, nullable=True, doc="the axis to normalise along; null for the last"
)


def leaky_relu_shape(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    """Shape rule of leaky_relu: TF casts integer features to float32 before the op."""
    require_numeric(inputs, 0)
    x = inputs[0]
    return [TensorInfo(x.shape, "float32")] if x.dtype in INT_DTYPES else [x]


def along_axis(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    """Shape rule of softmax and log_softmax: floats of rank 1 or more, `axis` within the rank."""
    (x,) = same_as_input(inputs, attrs)
    if x.rank == 0:
        raise ShapeError("needs a tensor of rank 1 or more, not a scalar", input=0)
    axis = attrs.get("axis")
    normalize_axis(-1 if axis is None else axis, x.rank)
    return [x]


OPS = [
    OpSpec(
        name="sigmoid",
        doc="1 / (1 + exp(-x)), element-wise.",
        fn=lambda tf, x: tf.sigmoid(x),
        infer=same_as_input,
        aliases=("math.sigmoid", "nn.sigmoid"),
        category="activation",
        examples=(Example((ANY,)),),
    ),
    OpSpec(
        name="nn.relu",
        doc="max(features, 0), element-wise.",
        fn=lambda tf, features: tf.nn.relu(features),
        infer=numeric_unary,
        inputs=("features",),
        category="activation",
        examples=(Example((SIGNED,)),),
    ),
    OpSpec(
        name="nn.relu6",
        doc="min(max(features, 0), 6), element-wise.",
        fn=lambda tf, features: tf.nn.relu6(features),
        infer=numeric_unary,
        inputs=("features",),
        category="activation",
        examples=(Example((AROUND_0_AND_6,)),),
    ),
    OpSpec(
        name="nn.elu",
        doc="Exponential linear unit: features if positive, else exp(features) - 1.",
        fn=lambda tf, features: tf.nn.elu(features),
        infer=same_as_input,
        inputs=("features",),
        category="activation",
        examples=(Example((SIGNED,)),),
    ),
    OpSpec(
        name="nn.selu",
        doc="Scaled exponential linear unit, element-wise.",
        fn=lambda tf, features: tf.nn.selu(features),
        infer=same_as_input,
        inputs=("features",),
        category="activation",
        examples=(Example((SIGNED,)),),
    ),
    OpSpec(
        name="nn.gelu",
        doc="Gaussian error linear unit, element-wise, exact or by its tanh approximation.",
        fn=lambda tf, features, approximate=False: tf.nn.gelu(features, approximate=approximate),
        infer=same_as_input,
        inputs=("features",),
        attrs=(AttrSpec("approximate", "bool", default=False, doc="use the tanh approximation"),),
        category="activation",
        examples=(Example((ANY,)), Example((ANY,), {"approximate": True})),
    ),
    OpSpec(
        name="nn.softplus",
        doc="log(exp(features) + 1), element-wise.",
        fn=lambda tf, features: tf.nn.softplus(features),
        infer=same_as_input,
        inputs=("features",),
        aliases=("math.softplus",),
        category="activation",
        examples=(Example((ANY,)),),
    ),
    OpSpec(
        name="nn.softsign",
        doc="features / (abs(features) + 1), element-wise.",
        fn=lambda tf, features: tf.nn.softsign(features),
        infer=same_as_input,
        inputs=("features",),
        aliases=("math.softsign",),
        category="activation",
        examples=(Example((ANY,)),),
    ),
    OpSpec(
        name="nn.silu",
        doc="features * sigmoid(beta * features), element-wise (also called swish).",
        fn=lambda tf, features, beta=1.0: tf.nn.silu(features, beta=beta),
        infer=same_as_input,
        inputs=("features",),
        attrs=(AttrSpec("beta", "float", default=1.0, doc="the slope inside the sigmoid"),),
        aliases=("nn.swish",),
        category="activation",
        examples=(Example((ANY,)), Example((ANY,), {"beta": 1.5})),
    ),
    OpSpec(
        name="math.log_sigmoid",
        doc="log(sigmoid(x)), element-wise, computed stably.",
        fn=lambda tf, x: tf.math.log_sigmoid(x),
        infer=same_as_input,
        category="activation",
        examples=(Example((ANY,)),),
    ),
    OpSpec(
        name="nn.leaky_relu",
        doc="features if positive, else alpha * features; integers are computed in float32.",
        fn=lambda tf, features, alpha=0.2: tf.nn.leaky_relu(features, alpha=alpha),
        infer=leaky_relu_shape,
        inputs=("features",),
        attrs=(AttrSpec("alpha", "float", default=0.2, doc="the slope for negative features"),),
        category="activation",
        examples=(
            Example((SIGNED,)),
            Example((SIGNED,), {"alpha": 0.05}),
            Example((Sample((4,), "int32", -3, 3),)),
        ),
    ),
    OpSpec(
        name="nn.softmax",
        doc="exp(logits) normalised to sum to 1 along an axis.",
        fn=lambda tf, logits, axis=None: tf.nn.softmax(logits, axis=axis),
        infer=along_axis,
        inputs=("logits",),
        attrs=(SOFTMAX_AXIS,),
        aliases=("math.softmax",),
        category="activation",
        examples=(Example((ANY,)), Example((ANY,), {"axis": 0})),
    ),
    OpSpec(
        name="nn.log_softmax",
        doc="logits - log(reduce_sum(exp(logits))) along an axis.",
        fn=lambda tf, logits, axis=None: tf.nn.log_softmax(logits, axis=axis),
        infer=along_axis,
        inputs=("logits",),
        attrs=(SOFTMAX_AXIS,),
        aliases=("math.log_softmax",),
        category="activation",
        examples=(Example((ANY,)), Example((Sample((2, 3, 2)),), {"axis": -2})),
    ),
]
