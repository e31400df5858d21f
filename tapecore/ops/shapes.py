"""Ops that move elements without computing on them: reshape, join, split, pad, copy, cast.

Every size of an output comes from an attr, never from a tensor, so each shape rule computes
the exact output shape before TensorFlow runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..dtypes import FLOAT_DTYPES, INT32_MAX
from ..opspec import (
    AttrSpec,
    Example,
    OpSpec,
    Sample,
    ShapeError,
    TensorInfo,
    common_dtype,
    normalize_axis,
)

MAX_OUTPUTS = 1_024  # tensors one unstack or split may make; each is a node the engine tracks
PAD_MODES = ("CONSTANT", "REFLECT", "SYMMETRIC", "constant", "reflect", "symmetric")  # TF upper-cases


def _axes(axes: Any, rank: int, attr: str = "axis") -> list[int]:
    """Return an int or list of axes as non-negative indices; a scalar has no axes."""
    raw = [axes] if isinstance(axes, int) else list(axes)
    if rank == 0 and raw:
        raise ShapeError("a scalar has no axes", attr=attr)
    return [normalize_axis(a, rank, attr) for a in raw]


def _reshape(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    x = inputs[0]
    shape = list(attrs["shape"])
    if -1 in shape:
        # TF's rule: zeros in `shape` are set aside, so [-1, 0] still infers the -1 from the
        # input's non-zero dimensions.
        has_zero = 0 in shape
        known = math.prod(d for d in shape if d > 0)
        size = math.prod(d for d in x.shape if d > 0 or not has_zero)
        if size % known:
            raise ShapeError(f"cannot reshape {list(x.shape)} into {shape}", attr="shape")
        shape[shape.index(-1)] = size // known
    if math.prod(shape) != x.size:
        raise ShapeError(f"cannot reshape {list(x.shape)} ({x.size} elements) into {shape}", attr="shape")
    return [TensorInfo(tuple(shape), x.dtype)]


def _transpose(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    x = inputs[0]
    perm = attrs["perm"]
    if perm is None:
        return [TensorInfo(x.shape[::-1], x.dtype)]
    # TF runs a negative perm forwards, but its gradient cannot invert it: refuse it here.
    if sorted(perm) != list(range(x.rank)):
        raise ShapeError(f"{perm} is not a permutation of 0..{x.rank - 1}", attr="perm")
    return [TensorInfo(tuple(x.shape[p] for p in perm), x.dtype)]


def _expand_dims(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    x = inputs[0]
    axis = normalize_axis(attrs["axis"], x.rank + 1)
    return [TensorInfo((*x.shape[:axis], 1, *x.shape[axis:]), x.dtype)]


def _squeeze(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    x = inputs[0]
    if attrs["axis"] in (None, []):  # TF squeezes every axis of length 1 for both
        return [TensorInfo(tuple(d for d in x.shape if d != 1), x.dtype)]
    axes = set(_axes(attrs["axis"], x.rank))
    for a in axes:
        if x.shape[a] != 1:
            raise ShapeError(f"cannot squeeze axis {a} of length {x.shape[a]}", attr="axis")
    return [TensorInfo(tuple(d for i, d in enumerate(x.shape) if i not in axes), x.dtype)]


def _concat(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    dtype = common_dtype(inputs)
    first = inputs[0]
    if first.rank == 0:
        raise ShapeError("cannot concatenate scalars (stack them)", input=0)
    axis = normalize_axis(attrs["axis"], first.rank)
    for i, t in enumerate(inputs):
        off_axis = t.shape[:axis] + t.shape[axis + 1 :] != first.shape[:axis] + first.shape[axis + 1 :]
        if t.rank != first.rank or off_axis:
            raise ShapeError(f"shape {list(t.shape)} does not fit {list(first.shape)} off axis {axis}", input=i)
    total = sum(t.shape[axis] for t in inputs)
    return [TensorInfo((*first.shape[:axis], total, *first.shape[axis + 1 :]), dtype)]


def _stack(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    dtype = common_dtype(inputs)
    first = inputs[0]
    for i, t in enumerate(inputs):
        if t.shape != first.shape:
            raise ShapeError(f"shape {list(t.shape)} differs from input 0's {list(first.shape)}", input=i)
    axis = normalize_axis(attrs["axis"], first.rank + 1)
    return [TensorInfo((*first.shape[:axis], len(inputs), *first.shape[axis:]), dtype)]


def _unstack(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    x = inputs[0]
    (axis,) = _axes(attrs["axis"], x.rank)
    if x.shape[axis] > MAX_OUTPUTS:
        raise ShapeError(f"would make {x.shape[axis]} outputs; at most {MAX_OUTPUTS}", input=0)
    part = TensorInfo(x.shape[:axis] + x.shape[axis + 1 :], x.dtype)
    return [part] * x.shape[axis]


def _split(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    x = inputs[0]
    (axis,) = _axes(attrs["axis"], x.rank)
    dim, splits = x.shape[axis], attrs["num_or_size_splits"]
    if isinstance(splits, int):
        if splits < 1 or splits > MAX_OUTPUTS:
            raise ShapeError(f"must split into 1 to {MAX_OUTPUTS} parts", attr="num_or_size_splits")
        if dim % splits:
            raise ShapeError(f"{splits} parts do not divide length {dim}", attr="num_or_size_splits")
        sizes = [dim // splits] * splits
    else:
        sizes = list(splits)
        known = sum(s for s in sizes if s != -1)
        if not sizes or sizes.count(-1) > 1:
            raise ShapeError("must list the sizes, with -1 at most once", attr="num_or_size_splits")
        if sizes == [-1]:
            raise ShapeError(f"a single part must be the whole length {dim}", attr="num_or_size_splits")
        if -1 in sizes:
            if known > dim:
                raise ShapeError(f"sizes {list(splits)} exceed length {dim}", attr="num_or_size_splits")
            sizes[sizes.index(-1)] = dim - known
        if sum(sizes) != dim:
            raise ShapeError(f"sizes {list(splits)} do not add up to length {dim}", attr="num_or_size_splits")
    return [TensorInfo((*x.shape[:axis], s, *x.shape[axis + 1 :]), x.dtype) for s in sizes]


def _tile(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    x, multiples = inputs[0], attrs["multiples"]
    if len(multiples) != x.rank:
        raise ShapeError(f"needs one multiple per axis ({x.rank}), not {len(multiples)}", attr="multiples")
    return [TensorInfo(tuple(d * m for d, m in zip(x.shape, multiples, strict=True)), x.dtype)]


def _broadcast_to(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    x, shape = inputs[0], tuple(attrs["shape"])
    if len(shape) < x.rank:
        raise ShapeError(f"cannot broadcast {list(x.shape)} to {list(shape)}", attr="shape")
    for d, target in zip(x.shape[::-1], shape[::-1], strict=False):
        if d not in (1, target):
            raise ShapeError(f"cannot broadcast {list(x.shape)} to {list(shape)}", attr="shape")
    return [TensorInfo(shape, x.dtype)]


def _pad(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    x, paddings, mode = inputs[0], attrs["paddings"], attrs["mode"].upper()
    if x.rank == 0:
        raise ShapeError("a scalar has no axes to pad", input=0)
    if len(paddings) != x.rank or any(len(row) != 2 for row in paddings):
        raise ShapeError(f"needs one [before, after] pair per axis ({x.rank})", attr="paddings")
    # Mirroring copies the input's own elements: REFLECT skips the edge, SYMMETRIC repeats it.
    reach = {"REFLECT": -1, "SYMMETRIC": 0}.get(mode)
    for axis, (row, d) in enumerate(zip(paddings, x.shape, strict=True)):
        if reach is not None and max(row) > d + reach:
            raise ShapeError(f"{mode} pads axis {axis} (length {d}) by at most {d + reach}", attr="paddings")
    # The float attr is converted to the tensor's dtype, which only 0 survives for ints and bool.
    if x.dtype not in FLOAT_DTYPES and attrs["constant_values"] != 0:
        raise ShapeError(f"a {x.dtype} tensor pads with 0 only; cast it first", attr="constant_values")
    return [TensorInfo(tuple(d + a + b for d, (a, b) in zip(x.shape, paddings, strict=True)), x.dtype)]


def _reverse(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    axes = _axes(attrs["axis"], inputs[0].rank)
    if len(set(axes)) != len(axes):
        raise ShapeError("axis lists the same axis twice", attr="axis")
    return [inputs[0]]


def _same(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    return [inputs[0]]


def _cast(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    return [TensorInfo(inputs[0].shape, attrs["dtype"])]


X = Sample((2, 3))
OPS = [
    OpSpec(
        name="reshape",
        doc="Same elements, new shape (one dimension may be -1: inferred).",
        fn=lambda tf, tensor, shape: tf.reshape(tensor, shape=shape),
        infer=_reshape,
        inputs=("tensor",),
        attrs=(AttrSpec("shape", "shape", maximum=INT32_MAX, doc="the new shape; -1 once for 'the rest'"),),
        category="shape",
        examples=(Example((X,), {"shape": [3, 2]}), Example((X,), {"shape": [-1]})),
    ),
    OpSpec(
        name="transpose",
        doc="Permute axes (default: reverse them).",
        fn=lambda tf, a, perm=None: tf.transpose(a, perm=perm),
        infer=_transpose,
        inputs=("a",),
        attrs=(AttrSpec("perm", "ints", default=None, nullable=True, doc="the new order of the axes"),),
        category="shape",
        examples=(Example((X,)), Example((Sample((2, 3, 4)),), {"perm": [1, 2, 0]})),
    ),
    OpSpec(
        name="expand_dims",
        doc="Insert an axis of length 1.",
        fn=lambda tf, input, axis: tf.expand_dims(input, axis=axis),
        infer=_expand_dims,
        inputs=("input",),
        attrs=(AttrSpec("axis", "axis", doc="where the new axis goes; -1 appends"),),
        category="shape",
        examples=(Example((X,), {"axis": 1}), Example((X,), {"axis": -1})),
    ),
    OpSpec(
        name="squeeze",
        doc="Remove axes of length 1 (all of them, or those listed).",
        fn=lambda tf, input, axis=None: tf.squeeze(input, axis=axis),
        infer=_squeeze,
        inputs=("input",),
        attrs=(AttrSpec("axis", "axes", default=None, nullable=True, doc="axes to remove; null: all of length 1"),),
        category="shape",
        examples=(Example((Sample((1, 3, 1)),)), Example((Sample((1, 3, 1)),), {"axis": [-1]})),
    ),
    OpSpec(
        name="concat",
        doc="Join tensors along an existing axis.",
        fn=lambda tf, *values, axis: tf.concat(list(values), axis=axis),
        infer=_concat,
        inputs=("values",),
        attrs=(AttrSpec("axis", "axis", doc="the axis to join along"),),
        category="shape",
        variadic=True,
        examples=(
            Example((X, Sample((1, 3))), {"axis": 0}),
            Example((X, X, Sample((2, 1))), {"axis": -1}),
        ),
    ),
    OpSpec(
        name="stack",
        doc="Join same-shaped tensors along a new axis.",
        fn=lambda tf, *values, axis=0: tf.stack(list(values), axis=axis),
        infer=_stack,
        inputs=("values",),
        attrs=(AttrSpec("axis", "axis", default=0, doc="where the new axis goes"),),
        category="shape",
        variadic=True,
        examples=(Example((X, X)), Example((X, X, X), {"axis": -1})),
    ),
    OpSpec(
        name="unstack",
        doc="Split a tensor into its slices along an axis, one output each.",
        fn=lambda tf, value, axis=0: tf.unstack(value, axis=axis),
        infer=_unstack,
        inputs=("value",),
        attrs=(AttrSpec("axis", "axis", default=0, doc="the axis to unstack"),),
        category="shape",
        examples=(Example((X,)), Example((X,), {"axis": -1})),
    ),
    OpSpec(
        name="split",
        doc="Split a tensor along an axis into equal parts or parts of given sizes.",
        fn=lambda tf, value, num_or_size_splits, axis=0: tf.split(
            value, num_or_size_splits=num_or_size_splits, axis=axis
        ),
        infer=_split,
        inputs=("value",),
        attrs=(
            AttrSpec("num_or_size_splits", "int_or_ints", minimum=-1, doc="a number of equal parts, or sizes"),
            AttrSpec("axis", "axis", default=0, doc="the axis to split"),
        ),
        category="shape",
        examples=(
            Example((Sample((4, 3)),), {"num_or_size_splits": 2}),
            Example((Sample((2, 6)),), {"num_or_size_splits": [1, -1, 2], "axis": 1}),
        ),
    ),
    OpSpec(
        name="tile",
        doc="Repeat a tensor along each axis.",
        fn=lambda tf, input, multiples: tf.tile(input, multiples=multiples),
        infer=_tile,
        inputs=("input",),
        attrs=(AttrSpec("multiples", "ints", minimum=0, maximum=INT32_MAX, doc="repetitions per axis"),),
        category="shape",
        examples=(Example((X,), {"multiples": [2, 1]}), Example((X,), {"multiples": [1, 3]})),
    ),
    OpSpec(
        name="broadcast_to",
        doc="Broadcast a tensor to a shape.",
        fn=lambda tf, input, shape: tf.broadcast_to(input, shape=shape),
        infer=_broadcast_to,
        inputs=("input",),
        attrs=(AttrSpec("shape", "shape", minimum=0, maximum=INT32_MAX, doc="the target shape"),),
        category="shape",
        examples=(
            Example((Sample((3,)),), {"shape": [2, 3]}),
            Example((Sample((2, 1)),), {"shape": [2, 2, 4]}),
        ),
    ),
    OpSpec(
        name="pad",
        doc="Pad a tensor with a constant or by mirroring its edges.",
        fn=lambda tf, tensor, paddings, mode="CONSTANT", constant_values=0: tf.pad(
            tensor, paddings=paddings, mode=mode, constant_values=constant_values
        ),
        infer=_pad,
        inputs=("tensor",),
        attrs=(
            AttrSpec("paddings", "int_matrix", minimum=0, maximum=INT32_MAX, doc="[before, after] per axis"),
            AttrSpec("mode", "string", default="CONSTANT", choices=PAD_MODES, doc="how to fill"),
            AttrSpec("constant_values", "float", default=0, doc="the fill value in CONSTANT mode"),
        ),
        category="shape",
        examples=(
            Example((X,), {"paddings": [[1, 0], [2, 1]], "constant_values": 0.5}),
            Example((X,), {"paddings": [[1, 1], [2, 2]], "mode": "REFLECT"}),
            Example((X,), {"paddings": [[2, 1], [0, 3]], "mode": "symmetric"}),
        ),
    ),
    OpSpec(
        name="reverse",
        doc="Reverse the order of elements along the given axes.",
        fn=lambda tf, tensor, axis: tf.reverse(tensor, axis=axis),
        infer=_reverse,
        inputs=("tensor",),
        attrs=(AttrSpec("axis", "ints", doc="the axes to reverse"),),
        category="shape",
        examples=(Example((X,), {"axis": [1]}), Example((X,), {"axis": [0, -1]})),
    ),
    OpSpec(
        name="identity",
        doc="The input, unchanged.",
        fn=lambda tf, input: tf.identity(input),
        infer=_same,
        inputs=("input",),
        category="array",
        examples=(Example((X,)),),
    ),
    OpSpec(
        name="stop_gradient",
        doc="The input, but no gradient flows back through it.",
        fn=lambda tf, input: tf.stop_gradient(input),
        infer=_same,
        inputs=("input",),
        category="array",
        differentiable=False,
        examples=(Example((X,)),),
    ),
    OpSpec(
        name="cast",
        doc="Convert a tensor to a floating-point dtype.",
        fn=lambda tf, x, dtype: tf.cast(x, dtype=dtype),
        infer=_cast,
        attrs=(AttrSpec("dtype", "dtype", choices=FLOAT_DTYPES, doc="the floating-point dtype to convert to"),),
        aliases=("dtypes.cast",),
        category="array",
        examples=(
            Example((X,), {"dtype": "float64"}),
            Example((Sample((2, 3), dtype="int32", low=-5, high=5),), {"dtype": "float32"}),
        ),
    ),
]
