"""Linear algebra: products, einsum, and the matrix functions of `tf.linalg`.

Matrices are the last two axes; any axes before them are a batch.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ..opspec import (
    MAX_ATTR_LIST,
    AttrError,
    AttrSpec,
    Example,
    OpCost,
    OpSpec,
    Sample,
    ShapeError,
    TensorInfo,
    bound_size,
    broadcast_shapes,
    common_dtype,
    normalize_axis,
)

# Determinant, solve and Cholesky have no 16-bit CPU kernels, and none of the four has a
# bfloat16 one; the inverse's float16 one is CPU-only: one rule for the four.
DECOMPOSITION_DTYPES = ("float32", "float64")
ELLIPSIS = "0"  # stands for "..." while parsing, as TensorFlow's own parser does
EINSUM_FORMAT = re.compile(r"^([a-zA-Z0,]*)(->[a-zA-Z0]*)?$")


class TensordotAxes(AttrSpec):
    """`tensordot`'s `axes`: N (the last N of a with the first N of b), or [a_axes, b_axes].

    No attr kind holds an integer or a pair of lists, so this attr checks its own values.
    """

    def check(self, value: Any) -> Any:
        if _is_int(value) and value >= 0:
            return value
        if isinstance(value, list) and len(value) == 2:
            if all(_is_int(v) for v in value):
                return [[value[0]], [value[1]]]
            if all(isinstance(v, list) and len(v) <= MAX_ATTR_LIST and all(map(_is_int, v)) for v in value):
                return [list(v) for v in value]
        raise AttrError("must be an integer N >= 0, or [a_axes, b_axes] (two integers or two lists)")

    def describe_type(self) -> str:
        return "integer, or [a_axes, b_axes]"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _numeric(inputs: Sequence[TensorInfo]) -> str:
    dtype = common_dtype(inputs)
    if dtype == "bool":
        raise ShapeError("needs numeric tensors, not bool", input=0)
    return dtype


def _require_matrix(t: TensorInfo, i: int) -> tuple[int, int]:
    if t.rank < 2:
        raise ShapeError(f"needs a matrix (rank 2 or more), not rank {t.rank}", input=i)
    return t.shape[-2], t.shape[-1]


def _require_square(t: TensorInfo, i: int) -> int:
    rows, cols = _require_matrix(t, i)
    if rows != cols:
        raise ShapeError(f"needs square matrices, not {rows}x{cols}", input=i)
    if t.dtype not in DECOMPOSITION_DTYPES:
        raise ShapeError(f"needs float32 or float64, not {t.dtype}", input=i)
    return rows


def _batch(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return broadcast_shapes(a, b)
    except ShapeError as e:
        raise ShapeError(f"batch dimensions: {e.message}", input=1) from None


def _matmul(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    a, b = inputs
    dtype = _numeric(inputs)
    m, k = _require_matrix(a, 0)
    k2, n = _require_matrix(b, 1)
    if attrs["transpose_a"]:
        m, k = k, m
    if attrs["transpose_b"]:
        k2, n = n, k2
    if k != k2:
        raise ShapeError(f"inner dimensions differ: {k} and {k2}", input=1)
    return [TensorInfo((*_batch(a.shape[:-2], b.shape[:-2]), m, n), dtype)]


def _matvec(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    a, b = inputs
    dtype = _numeric(inputs)
    m, n = _require_matrix(a, 0)
    if attrs["transpose_a"]:
        m, n = n, m
    if b.rank < 1 or b.shape[-1] != n:
        raise ShapeError(f"needs vectors of length {n}, not shape {list(b.shape)}", input=1)
    return [TensorInfo((*_batch(a.shape[:-2], b.shape[:-1]), m), dtype)]


def _tensordot(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    a, b = inputs
    dtype = _numeric(inputs)
    axes = attrs["axes"]
    if isinstance(axes, int):
        if axes > a.rank or axes > b.rank:
            raise ShapeError(f"cannot contract {axes} axes of ranks {a.rank} and {b.rank}", attr="axes")
        a_axes, b_axes = list(range(a.rank - axes, a.rank)), list(range(axes))
    else:
        if len(axes[0]) != len(axes[1]):
            raise ShapeError("a_axes and b_axes differ in length", attr="axes")
        a_axes, b_axes = _contracted(axes[0], a), _contracted(axes[1], b)
    for i, j in zip(a_axes, b_axes, strict=True):
        if a.shape[i] != b.shape[j]:
            raise ShapeError(f"contracted dimensions differ: {a.shape[i]} and {b.shape[j]}", attr="axes")
    free_a = tuple(d for i, d in enumerate(a.shape) if i not in a_axes)
    free_b = tuple(d for j, d in enumerate(b.shape) if j not in b_axes)
    return [TensorInfo(free_a + free_b, dtype)]


def _contracted(axes: list[int], t: TensorInfo) -> list[int]:
    if t.rank == 0 and axes:
        raise ShapeError("a scalar has no axes to contract", attr="axes")
    out = [normalize_axis(x, t.rank, "axes") for x in axes]
    if len(set(out)) != len(out):
        raise ShapeError("an axis is listed twice", attr="axes")
    return out


def _einsum(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    """Parse the equation as TensorFlow does and compute the output shape."""
    dtype = _numeric(inputs)
    terms, output = _einsum_terms(attrs["equation"], len(inputs))
    dims, broadcast = _einsum_labels(terms, inputs)
    if output is None:
        # As TF's parser: labels seen once, sorted; "..." sorts first, kept if in one operand.
        counts = Counter("".join(terms))
        output = "".join(x for x in sorted(counts) if counts[x] == 1)
    if len(set(output)) != len(output):
        raise ShapeError("the output repeats a label or '...'", attr="equation")
    if set(output) - set(dims) - {ELLIPSIS}:
        raise ShapeError("the output has a label that no operand has", attr="equation")
    if broadcast and ELLIPSIS not in output:
        raise ShapeError("the output drops the '...' dimensions", attr="equation")
    # Three or more operands go through opt_einsum, which wants every output label in an input.
    if len(inputs) > 2 and ELLIPSIS in output and not any(ELLIPSIS in t for t in terms):
        raise ShapeError("the output has '...' but no operand does", attr="equation")
    shape = [d for x in output for d in (broadcast if x == ELLIPSIS else (dims[x],))]
    return [TensorInfo(tuple(shape), dtype)]


def _einsum_terms(equation: str, operands: int) -> tuple[list[str], str | None]:
    """Split an equation into its operands' terms and its output term (None: implicit)."""
    if ELLIPSIS in equation:
        raise ShapeError("labels are letters; digits are not allowed", attr="equation")
    match = EINSUM_FORMAT.match(equation.replace(" ", "").replace("...", ELLIPSIS))
    if not match:
        raise ShapeError(f"malformed equation {equation!r}", attr="equation")
    terms = match.group(1).split(",")
    if len(terms) != operands:
        raise ShapeError(f"the equation has {len(terms)} operands, not {operands}", attr="equation")
    return terms, None if match.group(2) is None else match.group(2)[2:]


def _einsum_labels(terms: list[str], inputs: Sequence[TensorInfo]) -> tuple[dict[str, int], tuple[int, ...]]:
    """Return each label's dimension and the broadcast shape of the '...' dimensions."""
    dims: dict[str, int] = {}
    broadcast: tuple[int, ...] = ()
    for i, (term, t) in enumerate(zip(terms, inputs, strict=True)):
        if term.count(ELLIPSIS) > 1:
            raise ShapeError(f"operand {i} has more than one '...'", attr="equation")
        named = len(term) - term.count(ELLIPSIS)
        if named > t.rank or (ELLIPSIS not in term and named != t.rank):
            raise ShapeError(f"operand {i} has {named} labels for rank {t.rank}", input=i)
        shape = t.shape
        start = term.find(ELLIPSIS)
        if start >= 0:
            end = start + t.rank - named
            try:
                broadcast = broadcast_shapes(broadcast, shape[start:end])
            except ShapeError as e:
                raise ShapeError(f"the '...' dimensions: {e.message}", input=i) from None
            shape = (*shape[:start], -1, *shape[end:])  # -1: the '...' slot, matched by no label
        for label, d in zip(term, shape, strict=True):
            if label != ELLIPSIS and dims.setdefault(label, d) != d:
                raise ShapeError(f"label {label} is {dims[label]} and {d}", input=i)
    return dims, broadcast


def _square_to_square(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    _require_square(inputs[0], 0)
    return [inputs[0]]


def _square_to_scalar(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    x = inputs[0]
    _require_square(x, 0)
    return [TensorInfo(x.shape[:-2], x.dtype)]


def _solve(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    matrix, rhs = inputs
    n = _require_square(matrix, 0)
    common_dtype(inputs)
    rows, _ = _require_matrix(rhs, 1)
    if rows != n:
        raise ShapeError(f"needs {n} rows to match the {n}x{n} matrices, not {rows}", input=1)
    # MatrixSolve does not broadcast: the batches must be the same.
    if rhs.shape[:-2] != matrix.shape[:-2]:
        raise ShapeError("batch dimensions must equal the matrices' (no broadcasting)", input=1)
    return [rhs]


def _trace(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    x = inputs[0]
    _require_matrix(x, 0)
    return [TensorInfo(x.shape[:-2], _numeric(inputs))]


def _diag_part(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    x = inputs[0]
    rows, cols = _require_matrix(x, 0)
    return [TensorInfo((*x.shape[:-2], min(rows, cols)), x.dtype)]


def _matrix_transpose(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    x = inputs[0]
    rows, cols = _require_matrix(x, 0)
    return [TensorInfo((*x.shape[:-2], cols, rows), x.dtype)]


def _cross(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    a, b = inputs
    dtype = _numeric(inputs)
    if a.rank < 1 or a.shape[-1] != 3:
        raise ShapeError(f"needs 3-vectors, not shape {list(a.shape)}", input=0)
    if b.shape != a.shape:
        raise ShapeError(f"needs the shape of input 0 {list(a.shape)}, not {list(b.shape)}", input=1)
    return [TensorInfo(a.shape, dtype)]


# --- cost rules: a multiply-add is two flops -----------------------------------------------


def _matmul_cost(inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> OpCost:
    a = inputs[0]
    inner = a.shape[-2] if attrs.get("transpose_a") else a.shape[-1]
    return OpCost(2 * outputs[0].bound * max(inner, 1))


def _tensordot_cost(inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> OpCost:
    a, b = inputs
    contracted = max(a.bound * b.bound // max(outputs[0].bound, 1), 1)
    # tensordot transposes and reshapes both operands into matrices first: two copies.
    return OpCost(2 * outputs[0].bound * contracted, scratch=a.bound + b.bound)


def _einsum_cost(inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> OpCost:
    """Every combination of label values once: the naive loop nest bounds any contraction order."""
    terms, _ = _einsum_terms(attrs["equation"], len(inputs))
    dims, broadcast = _einsum_labels(terms, inputs)
    combos = bound_size(tuple(dims.values())) * bound_size(broadcast)
    # TF transposes and broadcasts operands into batch matmuls: copies as large as the inputs,
    # and with three or more, intermediates as large as the output.
    scratch = sum(t.bound for t in inputs) + outputs[0].bound * (len(inputs) > 2)
    return OpCost(2 * combos, scratch=scratch)


def _cubic_cost(inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> OpCost:
    """A factorisation: n^3 per n x n matrix, with an n x n workspace for each."""
    x = inputs[0]
    n = max(x.shape[-1], 1)
    matrices = x.bound // (n * n) or 1
    rhs = inputs[1].bound if len(inputs) > 1 else 0
    return OpCost(2 * matrices * n**3 + 2 * n * rhs, scratch=x.bound + rhs)


TRANSPOSE_A = AttrSpec("transpose_a", "bool", default=False, doc="transpose a's matrices first")
TRANSPOSE_B = AttrSpec("transpose_b", "bool", default=False, doc="transpose b's matrices first")
# Well-conditioned matrices: the determinant, inverse and solve have gradients that finite
# differences can follow, and SPD ones for Cholesky.
WELL = Sample(value=[[2.0, 0.5, -0.3], [0.4, 1.5, 0.2], [-0.1, 0.3, 1.8]])
WELL_BATCH = Sample(value=[[[2.0, 0.5], [0.4, 1.5]], [[1.2, -0.6], [0.3, 2.1]]])
SPD = Sample(value=[[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]])

OPS = [
    OpSpec(
        name="matmul",
        doc="Matrix product of the last two axes, with batch axes broadcast.",
        fn=lambda tf, a, b, transpose_a=False, transpose_b=False: tf.matmul(
            a, b, transpose_a=transpose_a, transpose_b=transpose_b
        ),
        infer=_matmul,
        inputs=("a", "b"),
        attrs=(TRANSPOSE_A, TRANSPOSE_B),
        aliases=("linalg.matmul",),
        cost=_matmul_cost,
        category="linalg",
        examples=(
            Example((Sample((2, 3)), Sample((3, 4)))),
            Example((Sample((2, 3, 2)), Sample((4, 3))), {"transpose_a": True, "transpose_b": True}),
        ),
    ),
    OpSpec(
        name="linalg.matvec",
        doc="Matrix-vector product a @ b over the last axes, with batch axes broadcast.",
        fn=lambda tf, a, b, transpose_a=False: tf.linalg.matvec(a, b, transpose_a=transpose_a),
        infer=_matvec,
        inputs=("a", "b"),
        attrs=(TRANSPOSE_A,),
        cost=_matmul_cost,
        category="linalg",
        examples=(
            Example((Sample((2, 3)), Sample((3,)))),
            Example((Sample((2, 3, 2)), Sample((1, 3))), {"transpose_a": True}),
        ),
    ),
    OpSpec(
        name="tensordot",
        doc="Contract axes of a with axes of b (the generalised matrix product).",
        fn=lambda tf, a, b, axes: tf.tensordot(a, b, axes=axes),
        infer=_tensordot,
        inputs=("a", "b"),
        attrs=(TensordotAxes("axes", "int_matrix", doc="N, or [a_axes, b_axes]"),),
        aliases=("linalg.tensordot",),
        cost=_tensordot_cost,
        category="linalg",
        examples=(
            Example((Sample((2, 3)), Sample((3, 2))), {"axes": 1}),
            Example((Sample((2, 3, 4)), Sample((4, 2, 3))), {"axes": [[1, -1], [2, 0]]}),
            Example((Sample((2, 3)), Sample((2,))), {"axes": [0, 0]}),
        ),
    ),
    OpSpec(
        name="einsum",
        doc="Einstein summation over the inputs, as an equation such as 'ij,jk->ik'.",
        fn=lambda tf, *inputs, equation: tf.einsum(equation, *inputs),
        infer=_einsum,
        inputs=("inputs",),
        attrs=(AttrSpec("equation", "string", doc="subscripts, e.g. 'ij,jk->ik' or '...ij->...ji'"),),
        aliases=("linalg.einsum",),
        cost=_einsum_cost,
        category="linalg",
        variadic=True,
        examples=(
            Example((Sample((2, 3)), Sample((3, 4))), {"equation": "ij,jk->ik"}),
            Example((Sample((3, 3)),), {"equation": "ii"}),
            Example((Sample((2, 1, 2, 3)), Sample((4, 3, 2))), {"equation": "...ij, ...jk -> ...ki"}),
            Example((Sample((2, 3)), Sample((3, 4)), Sample((4,))), {"equation": "ij,jk,k->i"}),
        ),
    ),
    OpSpec(
        name="linalg.det",
        doc="Determinant of each square matrix.",
        fn=lambda tf, x: tf.linalg.det(x),
        infer=_square_to_scalar,
        inputs=("input",),
        cost=_cubic_cost,
        category="linalg",
        examples=(Example((WELL,)), Example((WELL_BATCH,))),
    ),
    OpSpec(
        name="linalg.inv",
        doc="Inverse of each square matrix.",
        fn=lambda tf, x: tf.linalg.inv(x),
        infer=_square_to_square,
        inputs=("input",),
        cost=_cubic_cost,
        category="linalg",
        examples=(Example((WELL,)), Example((WELL_BATCH,))),
    ),
    OpSpec(
        name="linalg.solve",
        doc="Solve matrix @ x = rhs for x, for each square matrix.",
        fn=lambda tf, matrix, rhs: tf.linalg.solve(matrix, rhs),
        infer=_solve,
        inputs=("matrix", "rhs"),
        cost=_cubic_cost,
        category="linalg",
        examples=(
            Example((WELL, Sample((3, 2)))),
            Example((WELL_BATCH, Sample((2, 2, 1)))),
        ),
    ),
    OpSpec(
        name="linalg.cholesky",
        doc="Cholesky factor (lower triangular) of each symmetric positive-definite matrix.",
        fn=lambda tf, x: tf.linalg.cholesky(x),
        infer=_square_to_square,
        inputs=("input",),
        cost=_cubic_cost,
        category="linalg",
        # The kernel reads only the lower triangle, while TF's gradient is symmetric (each
        # off-diagonal entry gets half): element-wise finite differences cannot agree, so
        # the example checks the value and shape only.
        examples=(Example((SPD,), skip_grad=(0,)),),
    ),
    OpSpec(
        name="linalg.trace",
        doc="Sum of the main diagonal of each matrix.",
        fn=lambda tf, x: tf.linalg.trace(x),
        infer=_trace,
        category="linalg",
        examples=(Example((Sample((3, 3)),)), Example((Sample((2, 2, 3)),))),
    ),
    OpSpec(
        name="linalg.diag_part",
        doc="Main diagonal of each matrix.",
        fn=lambda tf, x: tf.linalg.diag_part(x),
        infer=_diag_part,
        inputs=("input",),
        category="linalg",
        examples=(Example((Sample((3, 3)),)), Example((Sample((2, 3, 2)),))),
    ),
    OpSpec(
        name="linalg.matrix_transpose",
        doc="Transpose the last two axes.",
        fn=lambda tf, x: tf.linalg.matrix_transpose(x),
        infer=_matrix_transpose,
        inputs=("a",),
        category="linalg",
        examples=(Example((Sample((2, 3)),)), Example((Sample((2, 3, 4)),))),
    ),
    OpSpec(
        name="linalg.cross",
        doc="Cross product of 3-vectors along the last axis.",
        fn=lambda tf, a, b: tf.linalg.cross(a, b),
        infer=_cross,
        inputs=("a", "b"),
        category="linalg",
        examples=(Example((Sample((3,)), Sample((3,)))), Example((Sample((2, 3)), Sample((2, 3))))),
    ),
]
