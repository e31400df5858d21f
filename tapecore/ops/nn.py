"""Neural-network ops of `tf.nn`: losses, convolution, pooling, normalisation.

Images are NHWC (batch, height, width, channels), the only layout TF's CPU kernels run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..dtypes import INT32_MAX, INT_DTYPES
from ..opspec import (
    AttrSpec,
    Example,
    OpCost,
    OpSpec,
    Sample,
    ShapeError,
    TensorInfo,
    broadcast_shapes,
    common_dtype,
    normalize_axis,
    reduced,
    require_float,
)


def _floats(inputs: Sequence[TensorInfo]) -> str:
    require_float(inputs)
    return common_dtype(inputs)


def _softmax_cross_entropy(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    labels, logits = inputs
    dtype = _floats(inputs)
    if labels.shape != logits.shape:
        raise ShapeError(f"labels {list(labels.shape)} must have the logits' shape {list(logits.shape)}", input=0)
    if logits.rank == 0:
        raise ShapeError("logits need a class axis", input=1)
    axis = normalize_axis(attrs["axis"], logits.rank)
    return [TensorInfo(logits.shape[:axis] + logits.shape[axis + 1 :], dtype)]


def _sigmoid_cross_entropy(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    labels, logits = inputs
    dtype = _floats(inputs)
    if labels.shape != logits.shape:
        raise ShapeError(f"labels {list(labels.shape)} must have the logits' shape {list(logits.shape)}", input=0)
    return [TensorInfo(logits.shape, dtype)]


def _sparse_softmax_cross_entropy(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    labels, logits = inputs
    if labels.dtype not in INT_DTYPES:
        raise ShapeError(f"labels must be int32 or int64 class indices, not {labels.dtype}", input=0)
    require_float(inputs, 1)
    if logits.rank == 0 or logits.shape[-1] == 0:
        raise ShapeError("logits need a class axis with at least one class", input=1)
    if labels.shape != logits.shape[:-1]:
        raise ShapeError(f"labels must have shape {list(logits.shape[:-1])}, not {list(labels.shape)}", input=0)
    return [TensorInfo(labels.shape, logits.dtype)]


def _l2_loss(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    require_float(inputs)
    return [TensorInfo((), inputs[0].dtype)]


def _spatial(value: Any, attr: str) -> tuple[int, int]:
    """Return (height, width) of an int or a list of 1, 2 or 4 (NHWC) entries."""
    v = [value] if isinstance(value, int) else list(value)
    if len(v) == 4:
        if v[0] != 1 or v[3] != 1:
            raise ShapeError("the batch and channel entries must be 1", attr=attr)
        return v[1], v[2]
    if len(v) in (1, 2):
        return v[0], v[-1]
    raise ShapeError(f"must have 1, 2 or 4 entries, not {len(v)}", attr=attr)


def _windowed(size: int, window: int, stride: int, padding: str) -> int:
    """Return the output length of a sliding window, as TF's GetWindowedOutputSize."""
    if padding == "SAME":
        return -(-size // stride)
    return (size - window) // stride + 1


def _check_window(
    size: tuple[int, int],
    window: tuple[int, int],
    strides: tuple[int, int],
    padding: str,
    what: str,
    *,
    attr: str | None = None,
    input: int | None = None,
) -> None:
    """Bound a sliding window and its strides by the input, for either padding, or raise ShapeError.

    VALID: a window longer than the input gives TF an empty output, but oneDNN's max pool
    divides by zero there and kills the process, and its conv2d returns a wrong shape.
    SAME: TF pads the input to fit the window and visits every padded position, so a 2**31
    window over a 4x4 image runs for minutes; past 2n - 1 every window already covers the
    whole input, so 2n + 1 refuses nothing that computes anything different.
    A stride past both the input and the window gives one output per axis, as that length does.
    """
    for axis, (n, k, s) in enumerate(zip(size, window, strides, strict=True)):
        longest = n if padding == "VALID" else 2 * n + 1
        if k > longest:
            limit = "the input's" if padding == "VALID" else "twice the input's plus 1,"
            raise ShapeError(
                f"the {window[0]}x{window[1]} {what} exceeds the {size[0]}x{size[1]} images: with {padding} padding "
                f"a window is at most {limit} length ({longest} on axis {axis})",
                attr=attr,
                input=input,
            )
        if s > max(n, k, 1):
            raise ShapeError(
                f"stride {s} on axis {axis} is longer than both the input ({n}) and the window ({k})", attr="strides"
            )


# TF's pooling kernels visit about 2e9 window positions a second where its matmul does 7e10
# flops (one core of this host's kind): a position is charged as 32 flops, so that max_flops
# bounds a pool's time as it bounds a matmul's.
POOL_POSITION_FLOPS = 32


def _window_cost(inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> OpCost:
    """A pool visits every position of its window for every output, padding included."""
    kh, kw = _spatial(attrs["ksize"], "ksize")
    return OpCost(POOL_POSITION_FLOPS * outputs[0].bound * kh * kw + inputs[0].bound)


def _conv2d_cost(inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> OpCost:
    """A multiply-add per filter tap and output; the im2col patches are the kernel's scratch."""
    fh, fw, cin, _ = inputs[1].shape
    taps = max(fh, 1) * max(fw, 1) * max(cin, 1)
    out = outputs[0]
    positions = out.bound // max(out.shape[-1], 1)
    return OpCost(2 * out.bound * taps, scratch=positions * taps)


def _conv2d(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    x, filters = inputs
    dtype = _floats(inputs)
    if x.rank < 4:
        raise ShapeError(f"needs NHWC images (rank 4 or more), not rank {x.rank}", input=0)
    if filters.rank != 4 or 0 in filters.shape:
        raise ShapeError(f"needs [height, width, in, out] filters, not {list(filters.shape)}", input=1)
    fh, fw, cin, cout = filters.shape
    # Grouped convolution runs on some devices only; one rule for all: channels match.
    if x.shape[-1] != cin:
        raise ShapeError(f"filters take {cin} channels, the input has {x.shape[-1]}", input=1)
    sh, sw = _spatial(attrs["strides"], "strides")
    dh, dw = _spatial(1 if attrs["dilations"] is None else attrs["dilations"], "dilations")
    if dtype == "float64" and (dh, dw) != (1, 1):
        raise ShapeError("TF's CPU kernels have no float64 gradient of a dilated convolution", input=0)
    h, w = x.shape[-3:-1]
    window = ((fh - 1) * dh + 1, (fw - 1) * dw + 1)  # dilation spreads the filter's taps
    if (dh, dw) != (1, 1):
        _check_window((h, w), window, (sh, sw), attrs["padding"], "dilated filter window", attr="dilations")
    else:
        _check_window((h, w), window, (sh, sw), attrs["padding"], "filter window", input=1)
    height = _windowed(h, window[0], sh, attrs["padding"])
    width = _windowed(w, window[1], sw, attrs["padding"])
    return [TensorInfo((*x.shape[:-3], height, width, cout), dtype)]


def _pool(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    x = inputs[0]
    require_float(inputs)
    if x.rank != 4:
        raise ShapeError(f"needs NHWC images (rank 4), not rank {x.rank}", input=0)
    window = _spatial(attrs["ksize"], "ksize")
    sh, sw = _spatial(attrs["strides"], "strides")
    n, h, w, c = x.shape
    _check_window((h, w), window, (sh, sw), attrs["padding"], "window", attr="ksize")
    height = _windowed(h, window[0], sh, attrs["padding"])
    width = _windowed(w, window[1], sw, attrs["padding"])
    return [TensorInfo((n, height, width, c), x.dtype)]


def _bias_add(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    value, bias = inputs
    dtype = common_dtype(inputs)
    if dtype == "bool":
        raise ShapeError("needs numeric tensors, not bool", input=0)
    if value.rank < 2:
        raise ShapeError(f"needs rank 2 or more, not {value.rank}", input=0)
    if bias.shape != value.shape[-1:]:
        raise ShapeError(f"needs shape [{value.shape[-1]}] (the last axis), not {list(bias.shape)}", input=1)
    return [value]


def _moments(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    require_float(inputs)
    axes = attrs["axes"]
    # With no axes, TF's moments squeezes every axis of length 1 away; refuse that surprise.
    if axes == []:
        raise ShapeError("needs at least one axis", attr="axes")
    if inputs[0].rank == 0:
        raise ShapeError("a scalar has no axes to reduce", attr="axes")
    try:
        (out,) = reduced(inputs, {"axis": axes, "keepdims": attrs["keepdims"]})
    except ShapeError as e:
        raise ShapeError(e.message, attr="axes") from None
    return [out, out]


def _batch_normalization(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    dtype = _floats(inputs)
    try:
        shape = broadcast_shapes(*(t.shape for t in inputs))
    except ShapeError as e:
        raise ShapeError(e.message, input=1) from None
    return [TensorInfo(shape, dtype)]


def _l2_normalize(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    require_float(inputs)
    axis = attrs["axis"]
    if inputs[0].rank == 0 and axis not in (None, []):
        raise ShapeError("a scalar has no axis to normalise over", attr="axis")
    reduced(inputs, attrs)  # the axes are checked as a reduction's: in range, none twice
    return [inputs[0]]


PADDING = AttrSpec("padding", "string", choices=("SAME", "VALID"), doc="SAME keeps ceil(size/stride); VALID fits")
DATA_FORMAT = AttrSpec("data_format", "string", default="NHWC", choices=("NHWC",), doc="NHWC only")
STRIDES = AttrSpec("strides", "int_or_ints", minimum=1, maximum=INT32_MAX, doc="step of the window: n, [h, w]")
KSIZE = AttrSpec("ksize", "int_or_ints", minimum=1, maximum=INT32_MAX, doc="window size: n, [h, w]")
IMAGES = Sample((2, 5, 4, 2))
OPS = [
    OpSpec(
        name="nn.softmax_cross_entropy_with_logits",
        doc="Cross-entropy between label distributions and softmax(logits) along an axis.",
        fn=lambda tf, labels, logits, axis=-1: tf.nn.softmax_cross_entropy_with_logits(labels, logits, axis=axis),
        infer=_softmax_cross_entropy,
        inputs=("labels", "logits"),
        # TF's wrapper breaks on negative axes other than -1.
        attrs=(AttrSpec("axis", "axis", default=-1, minimum=-1, doc="the class axis: -1 (last) or 0, 1, ..."),),
        category="nn",
        examples=(
            # TF's logits gradient is softmax - labels: it holds only for labels that sum to 1.
            Example((Sample(value=[[0.2, 0.5, 0.3], [0.0, 0.9, 0.1]]), Sample((2, 3)))),
            Example((Sample(value=[[0.3, 1.0], [0.6, 0.0], [0.1, 0.0]]), Sample((3, 2))), {"axis": 0}),
        ),
    ),
    OpSpec(
        name="nn.sigmoid_cross_entropy_with_logits",
        doc="Element-wise cross-entropy between labels in [0, 1] and sigmoid(logits).",
        fn=lambda tf, labels, logits: tf.nn.sigmoid_cross_entropy_with_logits(labels, logits),
        infer=_sigmoid_cross_entropy,
        inputs=("labels", "logits"),
        category="nn",
        examples=(Example((Sample((2, 3), low=0.0, high=1.0), Sample((2, 3)))),),
    ),
    OpSpec(
        name="nn.sparse_softmax_cross_entropy_with_logits",
        doc="Cross-entropy between integer class labels and softmax(logits) over the last axis.",
        fn=lambda tf, labels, logits: tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits),
        infer=_sparse_softmax_cross_entropy,
        inputs=("labels", "logits"),
        int_inputs=(0,),
        category="nn",
        examples=(
            Example((Sample((2,), dtype="int32", low=0, high=3), Sample((2, 3))), skip_grad=(0,)),
            Example((Sample((2, 2), dtype="int64", low=0, high=4), Sample((2, 2, 4))), skip_grad=(0,)),
        ),
    ),
    OpSpec(
        name="nn.l2_loss",
        doc="sum(t ** 2) / 2.",
        fn=lambda tf, t: tf.nn.l2_loss(t),
        infer=_l2_loss,
        inputs=("t",),
        category="nn",
        examples=(Example((Sample((2, 3)),)),),
    ),
    OpSpec(
        name="nn.conv2d",
        doc="2-D convolution of NHWC images with [height, width, in, out] filters.",
        fn=lambda tf, input, filters, strides, padding, data_format="NHWC", dilations=None: tf.nn.conv2d(
            input, filters, strides=strides, padding=padding, data_format=data_format, dilations=dilations
        ),
        infer=_conv2d,
        inputs=("input", "filters"),
        attrs=(
            STRIDES,
            PADDING,
            DATA_FORMAT,
            AttrSpec(
                "dilations",
                "int_or_ints",
                default=None,
                nullable=True,
                minimum=1,
                maximum=INT32_MAX,
                doc="filter dilation: n, [h, w]; null for 1",
            ),
        ),
        cost=_conv2d_cost,
        category="nn",
        examples=(
            Example((IMAGES, Sample((2, 2, 2, 3))), {"strides": 1, "padding": "VALID"}),
            Example((IMAGES, Sample((3, 2, 2, 1))), {"strides": [2, 1], "padding": "SAME"}),
            # Dilated: float32, as TF's CPU kernels have no float64 gradient for it, so the
            # example checks the shape and value only.
            Example(
                (Sample((2, 5, 4, 2), dtype="float32"), Sample((2, 2, 2, 2), dtype="float32")),
                {"strides": [1, 1, 1, 1], "padding": "VALID", "dilations": 2},
                skip_grad=(0, 1),
            ),
        ),
    ),
    OpSpec(
        name="nn.max_pool2d",
        doc="Maximum over sliding windows of NHWC images.",
        fn=lambda tf, input, ksize, strides, padding, data_format="NHWC": tf.nn.max_pool2d(
            input, ksize=ksize, strides=strides, padding=padding, data_format=data_format
        ),
        infer=_pool,
        inputs=("input",),
        attrs=(KSIZE, STRIDES, PADDING, DATA_FORMAT),
        cost=_window_cost,
        category="nn",
        examples=(
            Example((IMAGES,), {"ksize": 2, "strides": 2, "padding": "VALID"}),
            Example((IMAGES,), {"ksize": [3, 2], "strides": [1, 2], "padding": "SAME"}),
        ),
    ),
    OpSpec(
        name="nn.avg_pool2d",
        doc="Mean over sliding windows of NHWC images.",
        fn=lambda tf, input, ksize, strides, padding, data_format="NHWC": tf.nn.avg_pool2d(
            input, ksize=ksize, strides=strides, padding=padding, data_format=data_format
        ),
        infer=_pool,
        inputs=("input",),
        attrs=(KSIZE, STRIDES, PADDING, DATA_FORMAT),
        cost=_window_cost,
        category="nn",
        examples=(
            Example((IMAGES,), {"ksize": 2, "strides": 1, "padding": "VALID"}),
            Example((IMAGES,), {"ksize": [1, 3, 3, 1], "strides": [1, 2, 2, 1], "padding": "SAME"}),
        ),
    ),
    OpSpec(
        name="nn.bias_add",
        doc="Add a 1-D bias along the last axis.",
        fn=lambda tf, value, bias: tf.nn.bias_add(value, bias),
        infer=_bias_add,
        inputs=("value", "bias"),
        category="nn",
        examples=(Example((Sample((2, 3)), Sample((3,)))), Example((IMAGES, Sample((2,))))),
    ),
    OpSpec(
        name="nn.moments",
        doc="Mean and variance across axes (two outputs).",
        fn=lambda tf, x, axes, keepdims=False: tf.nn.moments(x, axes=axes, keepdims=keepdims),
        infer=_moments,
        attrs=(
            AttrSpec("axes", "axes", doc="the axes to reduce"),
            AttrSpec("keepdims", "bool", default=False, doc="keep reduced axes with length 1"),
        ),
        category="nn",
        examples=(
            Example((Sample((2, 3)),), {"axes": [0]}),
            Example((Sample((2, 3, 2)),), {"axes": [0, 2], "keepdims": True}),
        ),
    ),
    OpSpec(
        name="nn.batch_normalization",
        doc="(x - mean) / sqrt(variance + variance_epsilon) * scale + offset, with broadcasting.",
        fn=lambda tf, x, mean, variance, offset=None, scale=None, *, variance_epsilon: tf.nn.batch_normalization(
            x, mean, variance, offset, scale, variance_epsilon=variance_epsilon
        ),
        infer=_batch_normalization,
        inputs=("x", "mean", "variance", "offset", "scale"),
        optional_inputs=2,
        attrs=(AttrSpec("variance_epsilon", "float", minimum=0, doc="added to the variance before its root"),),
        category="nn",
        examples=(
            Example(
                (Sample((2, 3)), Sample((3,)), Sample((3,), low=0.5, high=2.0), Sample((3,)), Sample((3,))),
                {"variance_epsilon": 1e-3},
            ),
            Example((Sample((2, 3)), Sample((2, 1)), Sample((2, 1), low=0.5, high=2.0)), {"variance_epsilon": 0.0}),
        ),
    ),
    OpSpec(
        name="nn.l2_normalize",
        doc="x / sqrt(max(sum(x ** 2), epsilon)) over the given axes.",
        fn=lambda tf, x, axis=None, epsilon=1e-12: tf.nn.l2_normalize(x, axis=axis, epsilon=epsilon),
        infer=_l2_normalize,
        attrs=(
            AttrSpec("axis", "axes", default=None, nullable=True, doc="axes to normalise over; null for all"),
            AttrSpec("epsilon", "float", default=1e-12, minimum=0, doc="lower bound of the squared norm"),
        ),
        aliases=("math.l2_normalize", "linalg.l2_normalize"),
        category="nn",
        examples=(Example((Sample((2, 3)),)), Example((Sample((2, 3)),), {"axis": 1})),
    ),
]
