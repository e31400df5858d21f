"""Ops that pick elements: slices, gathers, one-hot encodings, `where` and clipping.

Begins, ends, sizes and depths are attrs, so each shape rule knows the output exactly;
index tensors (gather's `indices`, one_hot's `indices`) are integer inputs whose values only
TensorFlow checks, at run time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..dtypes import FLOAT_DTYPES, INT32_MAX, INT32_MIN, INT_DTYPES
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
)

MAX_DEPTH = 16_777_216  # one-hot classes: a deeper row could not fit the output limits anyway


def _slice(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    x, begin, size = inputs[0], attrs["begin"], attrs["size"]
    if x.rank == 0:
        raise ShapeError("a scalar has nothing to slice", input=0)
    for name, values in (("begin", begin), ("size", size)):
        if len(values) != x.rank:
            raise ShapeError(f"needs {x.rank} entries, one per axis, not {len(values)}", attr=name)
    shape = []
    for axis, (b, s, d) in enumerate(zip(begin, size, x.shape, strict=True)):
        if b > d:
            raise ShapeError(f"begin {b} is past the end of axis {axis} (length {d})", attr="begin")
        if s > d - b:
            raise ShapeError(f"size {s} runs past the end of axis {axis} (length {d})", attr="size")
        shape.append(d - b if s == -1 else s)
    return [TensorInfo(tuple(shape), x.dtype)]


def _strided_slice(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    """Follow TF's ValidateStridedSliceOp: expand the ellipsis, then clamp like Python slices."""
    x, begin, end = inputs[0], attrs["begin"], attrs["end"]
    strides = attrs["strides"] if attrs["strides"] is not None else [1] * len(begin)
    if not begin:
        raise ShapeError("needs at least one entry", attr="begin")
    for name, values in (("end", end), ("strides", strides)):
        if len(values) != len(begin):
            raise ShapeError(f"needs {len(begin)} entries, as begin has, not {len(values)}", attr=name)
    if attrs["ellipsis_mask"] & (attrs["ellipsis_mask"] - 1):
        raise ShapeError("at most one ellipsis", attr="ellipsis_mask")

    def has(mask: str, i: int) -> bool:
        return bool(attrs[mask] >> i & 1)

    n = len(begin)
    # Without an ellipsis, TF implies one after the last entry.
    ellipsis_at = next((i for i in range(n) if has("ellipsis_mask", i)), n)
    entries = max(n, ellipsis_at + 1)
    new_after_ellipsis = sum(has("new_axis_mask", i) for i in range(ellipsis_at + 1, n))
    shape: list[int] = []
    axis = 0  # the next input axis to consume
    for i in range(entries):
        if i == ellipsis_at:
            stop = min(x.rank - (entries - i) + 1 + new_after_ellipsis, x.rank)
            shape.extend(x.shape[axis:stop])
            axis = max(axis, stop)
        elif has("new_axis_mask", i):
            shape.append(1)
        elif axis == x.rank:
            raise ShapeError(f"indexes more axes than the input's {x.rank}", attr="begin")
        else:
            size = _strided_size(
                begin[i],
                end[i],
                strides[i],
                x.shape[axis],
                i,
                has("begin_mask", i),
                has("end_mask", i),
                has("shrink_axis_mask", i),
            )
            if not has("shrink_axis_mask", i):
                shape.append(size)
            axis += 1
    return [TensorInfo(tuple(shape), x.dtype)]


def _strided_size(
    begin: int, end: int, stride: int, dim: int, i: int, begin_masked: bool, end_masked: bool, shrink: bool
) -> int:
    """Return the length that entry i of a strided slice keeps of an axis of length `dim`."""
    if stride == 0:
        raise ShapeError(f"entry {i} is 0; strides must be non-zero", attr="strides")
    if shrink:
        if stride < 0:
            raise ShapeError(f"entry {i} indexes a single element, so it needs a positive stride", attr="strides")
        if not -dim <= begin < dim:
            raise ShapeError(f"index {begin} is out of range for an axis of length {dim}", attr="begin")
        return 1
    lo, hi = (0, dim) if stride > 0 else (-1, dim - 1)

    def bound(value: int, masked: bool, is_end: bool) -> int:
        if masked:  # the whole axis, in the stride's direction
            return hi if is_end == (stride > 0) else lo
        return min(max(value + dim if value < 0 else value, lo), hi)

    length = bound(end, end_masked, True) - bound(begin, begin_masked, False)
    if length == 0 or (length < 0) != (stride < 0):
        return 0
    whole, part = divmod(abs(length), abs(stride))
    return whole + (part != 0)


def _gather(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    params, indices = inputs
    _require_indices(indices, 1)
    given = attrs["batch_dims"]
    if not -indices.rank <= given <= indices.rank:
        raise ShapeError(f"must lie in [-{indices.rank}, {indices.rank}] (the indices' rank)", attr="batch_dims")
    batch_dims = given + indices.rank if given < 0 else given
    if params.rank <= batch_dims:
        raise ShapeError(f"needs rank above batch_dims ({batch_dims}), not {params.rank}", input=0)
    # TF's default axis is batch_dims as given: a negative one then counts from params' end.
    axis = normalize_axis(given if attrs["axis"] is None else attrs["axis"], params.rank)
    if axis < batch_dims:
        raise ShapeError(f"axis {axis} must not come before batch_dims ({batch_dims})", attr="axis")
    if params.shape[:batch_dims] != indices.shape[:batch_dims]:
        raise ShapeError(f"the first {batch_dims} dimensions must match params'", input=1)
    shape = params.shape[:axis] + indices.shape[batch_dims:] + params.shape[axis + 1 :]
    return [TensorInfo(shape, params.dtype)]


def _one_hot(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    indices = inputs[0]
    _require_indices(indices, 0)
    axis = attrs["axis"]
    if not -1 <= axis <= indices.rank:
        raise ShapeError(f"must be -1 or in [0, {indices.rank}]", attr="axis")
    axis = indices.rank if axis == -1 else axis
    shape = (*indices.shape[:axis], attrs["depth"], *indices.shape[axis:])
    return [TensorInfo(shape, attrs["dtype"])]


def _where(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    condition, x, y = inputs
    if condition.dtype != "bool":
        raise ShapeError(f"needs a bool tensor, not {condition.dtype}", input=0)
    dtype = common_dtype([x, y])
    return [TensorInfo(broadcast_shapes(condition.shape, x.shape, y.shape), dtype)]


def _clip_by_value(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    t = inputs[0]
    dtype = common_dtype(inputs)
    if dtype == "bool":
        raise ShapeError("needs a numeric tensor, not bool", input=0)
    # The bounds broadcast against t but may not grow it: TF checks the result has t's shape.
    for i, bound in enumerate(inputs[1:], start=1):
        if len(bound.shape) > t.rank or any(
            d not in (1, e) for d, e in zip(bound.shape[::-1], t.shape[::-1], strict=False)
        ):
            raise ShapeError(f"shape {list(bound.shape)} does not broadcast to t's {list(t.shape)}", input=i)
    return [t]


def _gather_cost(inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> OpCost:
    """A gather reads what it writes; its gradient is made dense, as large as params."""
    return OpCost(2 * outputs[0].bound + inputs[1].bound, scratch=inputs[0].bound)


def _require_indices(t: TensorInfo, i: int) -> None:
    if t.dtype not in INT_DTYPES:
        raise ShapeError(f"indices must be int32 or int64, not {t.dtype}", input=i)


def _run_strided_slice(
    tf: Any,
    input: Any,
    begin: list[int],
    end: list[int],
    strides: list[int] | None = None,
    begin_mask: int = 0,
    end_mask: int = 0,
    ellipsis_mask: int = 0,
    new_axis_mask: int = 0,
    shrink_axis_mask: int = 0,
) -> Any:
    """Run tf.strided_slice (a named function: the lambda would not fit on a line)."""
    return tf.strided_slice(
        input,
        begin=begin,
        end=end,
        strides=strides,
        begin_mask=begin_mask,
        end_mask=end_mask,
        ellipsis_mask=ellipsis_mask,
        new_axis_mask=new_axis_mask,
        shrink_axis_mask=shrink_axis_mask,
    )


MASK_ATTRS = tuple(
    AttrSpec(name, "int", default=0, minimum=0, maximum=INT32_MAX, doc=doc)
    for name, doc in (
        ("begin_mask", "bit i set: entry i starts at the axis' start (begin ignored)"),
        ("end_mask", "bit i set: entry i runs to the axis' end (end ignored)"),
        ("ellipsis_mask", "bit i set: entry i is '...' (at most one bit)"),
        ("new_axis_mask", "bit i set: entry i inserts an axis of length 1"),
        ("shrink_axis_mask", "bit i set: entry i takes the single index begin[i], dropping the axis"),
    )
)
X = Sample((3, 4))

OPS = [
    OpSpec(
        name="slice",
        doc="The block that starts at `begin` and has `size` (-1: to the end) per axis.",
        fn=lambda tf, input, begin, size: tf.slice(input, begin=begin, size=size),
        infer=_slice,
        inputs=("input",),
        attrs=(
            AttrSpec("begin", "ints", minimum=0, maximum=INT32_MAX, doc="start index per axis"),
            AttrSpec("size", "ints", minimum=-1, maximum=INT32_MAX, doc="length per axis; -1 for the rest"),
        ),
        category="selection",
        examples=(
            Example((X,), {"begin": [1, 0], "size": [2, -1]}),
            Example((Sample((2, 3, 4)),), {"begin": [0, 1, 2], "size": [1, 2, 2]}),
        ),
    ),
    OpSpec(
        name="strided_slice",
        doc="x[begin:end:strides] per axis, with masks for omitted bounds, ..., newaxis and indexing.",
        fn=_run_strided_slice,
        infer=_strided_slice,
        inputs=("input",),
        attrs=(
            AttrSpec("begin", "ints", minimum=INT32_MIN, maximum=INT32_MAX, doc="start per entry"),
            AttrSpec("end", "ints", minimum=INT32_MIN, maximum=INT32_MAX, doc="stop (exclusive) per entry"),
            AttrSpec(
                "strides",
                "ints",
                default=None,
                nullable=True,
                minimum=INT32_MIN,
                maximum=INT32_MAX,
                doc="step per entry; null for 1s",
            ),
            *MASK_ATTRS,
        ),
        category="selection",
        examples=(
            Example((X,), {"begin": [2, 0], "end": [0, 4], "strides": [-1, 2]}),  # x[2:0:-1, 0:4:2]
            Example((X,), {"begin": [1, -1], "end": [0, 0], "shrink_axis_mask": 2, "end_mask": 1}),
            Example(  # x[..., newaxis, 1:3]
                (Sample((2, 3, 4)),),
                {"begin": [0, 0, 1], "end": [0, 0, 3], "ellipsis_mask": 1, "new_axis_mask": 2},
            ),
        ),
    ),
    OpSpec(
        name="gather",
        doc="Slices of params at integer indices along an axis.",
        fn=lambda tf, params, indices, axis=None, batch_dims=0: tf.gather(
            params, indices, axis=axis, batch_dims=batch_dims
        ),
        infer=_gather,
        inputs=("params", "indices"),
        attrs=(
            AttrSpec("axis", "axis", default=None, nullable=True, doc="the axis to gather from; null: batch_dims"),
            AttrSpec("batch_dims", "int", default=0, minimum=-64, maximum=64, doc="leading axes shared by both"),
        ),
        int_inputs=(1,),
        cost=_gather_cost,
        category="selection",
        examples=(
            Example((X, Sample((2, 2), dtype="int32", low=0, high=3)), skip_grad=(1,)),
            Example(
                (Sample((2, 3, 4)), Sample((2, 5), dtype="int32", low=0, high=4)),
                {"axis": 2, "batch_dims": 1},
                skip_grad=(1,),
            ),
        ),
    ),
    OpSpec(
        name="one_hot",
        doc="One-hot encode integer indices: on_value at the index, off_value elsewhere.",
        fn=lambda tf, indices, depth, on_value=1.0, off_value=0.0, axis=-1, dtype="float32": tf.one_hot(
            indices, depth=depth, on_value=on_value, off_value=off_value, axis=axis, dtype=dtype
        ),
        infer=_one_hot,
        inputs=("indices",),
        attrs=(
            AttrSpec("depth", "int", minimum=0, maximum=MAX_DEPTH, doc="the number of classes"),
            AttrSpec("on_value", "float", default=1.0, doc="the value at each index"),
            AttrSpec("off_value", "float", default=0.0, doc="the value everywhere else"),
            AttrSpec("axis", "int", default=-1, minimum=-1, doc="where the new axis goes; -1 appends"),
            AttrSpec("dtype", "dtype", default="float32", choices=FLOAT_DTYPES, doc="the output dtype"),
        ),
        int_inputs=(0,),
        category="selection",
        differentiable=False,
        examples=(
            Example((Sample((3,), dtype="int32", low=0, high=4),), {"depth": 4}),
            Example(
                (Sample((2, 3), dtype="int64", low=0, high=3),),
                {"depth": 3, "on_value": 2.0, "off_value": -1.0, "axis": 1, "dtype": "float64"},
            ),
        ),
    ),
    OpSpec(
        name="where",
        doc="Elements of x where condition is true, of y elsewhere, with broadcasting.",
        fn=lambda tf, condition, x, y: tf.where(condition, x, y),
        infer=_where,
        inputs=("condition", "x", "y"),
        category="selection",
        examples=(
            Example((Sample((3, 4), dtype="bool"), X, X), skip_grad=(0,)),
            Example((Sample((3, 1), dtype="bool"), Sample((4,)), X), skip_grad=(0,)),
        ),
    ),
    OpSpec(
        name="clip_by_value",
        doc="Clip t to [clip_value_min, clip_value_max], element-wise.",
        fn=lambda tf, t, clip_value_min, clip_value_max: tf.clip_by_value(t, clip_value_min, clip_value_max),
        infer=_clip_by_value,
        inputs=("t", "clip_value_min", "clip_value_max"),
        category="selection",
        examples=(
            Example((X, Sample((), low=-1.0, high=-0.5), Sample((), low=0.5, high=1.0))),
            Example((X, Sample((4,), low=-1.5, high=-0.2), Sample((3, 1), low=0.2, high=1.5))),
        ),
    ),
]
