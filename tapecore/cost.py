"""The cost model: what a checked request will need before anything is queued.

Three estimates, each an upper bound that the limits are checked against:

- `result_bytes`: the encoded result document (targets and gradients, Jacobians, Hessians
  or the jvp), worst case for the request's `encoding`;
- `memory_bytes`: the peak working memory of the TensorFlow process while it runs the job;
- `flops`: its floating-point operations.

The forward graph is tallied in the shape-inference pass (`Tally`): every tensor the tape
holds, the tensors that depend on a source (each of them gets a gradient), each op's cost by
its registry rule (`OpSpec.cost`), and the largest scratch buffer. `estimate` turns that
tally into the cost of the request's mode. Every size counts a zero dimension as 1.

The factors below are upper bounds measured on TF 2.x CPU kernels (tests/test_cost_property.py
checks them on generated graphs; SECURITY.md gives the figures):

- a backward pass holds a gradient per connected tensor and a temporary of the same size;
- `order` n nests n tapes, each recording the backward pass of the one below: the
  connected set grows geometrically, by at most 3 per level (the product rule doubles terms);
- `jacobian`, `batch_jacobian` and `hessian` vectorise the backward pass over the target's
  elements with pfor: each connected tensor gets a leading axis of that length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from .dtypes import FLOAT_DTYPES, ITEMSIZE
from .errors import ErrorCollector, pointer
from .limits import Limits
from .opspec import TensorInfo, bound_size

if TYPE_CHECKING:
    from .graph import GradientRequest, Node

# Per connected byte of the forward graph: a gradient and one temporary per tensor.
BACKWARD_FACTOR = 2
# pfor's working set per target element, per connected byte: the vectorised gradient, its
# temporaries and the gathered forward value (2.2 measured on einsum outer products, 3.4 on
# gather, whose gradient is made dense in every lane).
PFOR_FACTOR = 4
# The Hessian's pfor runs the backward pass of a backward pass: twice the first's working
# set per source element (1.7 to 2.7 measured on sin(outer(x, x))).
HESSIAN_FACTOR = 6
# ForwardAccumulator carries a tangent per connected tensor and, for ops with no forward
# rule, runs a double backward pass of the op: two more temporaries.
JVP_FACTOR = 4
# Each op's backward pass costs about twice its forward pass (matmul: two matmuls).
BACKWARD_FLOPS = 2

# Worst-case JSON characters per element, separator included: float32 needs 9 significant
# digits ("-1.17549435e-38,"), float64 17 ("-2.2250738585072014e-308,"); "-Infinity" in
# quotes is shorter. 16-bit floats are written as float32.
JSON_ELEMENT_CHARS = {
    "float16": 16,
    "bfloat16": 16,
    "float32": 16,
    "float64": 25,
    "int32": 12,
    "int64": 21,
    "bool": 6,
}
JSON_ROW_CHARS = 3  # "[]," per list, so that empty rows count
TENSOR_DOC_CHARS = 64  # {"value": , "dtype": "bfloat16", "shape": []} and a key
SHAPE_DIM_CHARS = 21  # one dimension in "shape", with its comma
ENTRY_CHARS = 512  # a source's key and its note ("... is not connected", non-finite counts)
DOCUMENT_CHARS = 1_024  # the device string, the notes' framing, braces


class Cost(NamedTuple):
    """The estimate of one request; the API sums it over a batch's graphs."""

    result_bytes: int  # the encoded result document, worst case for its encoding
    memory_bytes: int  # peak working memory of the TensorFlow process
    flops: int  # floating-point operations, forward and backward

    def as_dict(self) -> dict[str, int]:
        return self._asdict()


@dataclass
class Tally:
    """What the forward graph holds and costs, summed during shape inference."""

    held_bytes: int = 0  # every tensor: inputs, literals, op outputs (the tape keeps them all)
    input_bytes: int = 0  # the request's tensors, decoded into arrays before TF copies them
    connected_bytes: int = 0  # tensors that depend on a source: each gets a gradient
    flops: int = 0
    connected_flops: int = 0  # the ops on a path from a source: the backward pass runs these
    scratch_bytes: int = 0  # the largest temporary buffer of one op (freed after it)
    biggest: Node | None = None  # the op whose outputs hold the most: where a refusal points
    biggest_bytes: int = -1
    connected: set[str] = field(default_factory=set)  # names of tensors and ops on a source's path

    def hold(self, info: TensorInfo, connected: bool) -> None:
        """Count a tensor the graph holds (an input or a literal)."""
        nbytes = info.bound * ITEMSIZE[info.dtype]
        self.held_bytes += nbytes
        if connected:
            self.connected_bytes += nbytes

    def add_op(self, node: Node, ins: Sequence[TensorInfo], outs: Sequence[TensorInfo], connected: bool) -> None:
        """Count an op: its outputs, its forward cost by its registry rule, its scratch."""
        cost = node.spec.cost(ins, outs, node.attrs)
        out_bytes = float_bytes = 0
        for o in outs:
            nbytes = o.bound * ITEMSIZE[o.dtype]
            out_bytes += nbytes
            if o.dtype in FLOAT_DTYPES:
                float_bytes += nbytes
        self.held_bytes += out_bytes
        self.flops += cost.flops
        if cost.scratch:
            itemsize = max((ITEMSIZE[t.dtype] for t in (*ins, *outs)), default=4)
            self.scratch_bytes = max(self.scratch_bytes, cost.scratch * itemsize)
        if connected:
            self.connected_bytes += float_bytes  # only floats get gradients
            self.connected_flops += cost.flops
        if out_bytes > self.biggest_bytes:
            self.biggest, self.biggest_bytes = node, out_bytes


def encoded_bytes(shape: tuple[int, ...], dtype: str, encoding: str) -> tuple[int, int]:
    """Return an upper bound on the characters of a tensor document of this shape and dtype, and its bound size."""
    rows = 0  # the lists at each depth: 1, then shape[0], then shape[0] * shape[1], ...
    size = 1
    for d in shape:
        rows += size
        size *= d or 1
    head = TENSOR_DOC_CHARS + SHAPE_DIM_CHARS * len(shape)
    if encoding == "b64":
        return head + 4 * -(-size * ITEMSIZE[dtype] // 3), size
    return head + size * JSON_ELEMENT_CHARS[dtype] + rows * JSON_ROW_CHARS, size


def result_tensors(req: GradientRequest) -> list[tuple[tuple[int, ...], str]]:
    """Return the shape and dtype of each tensor of the result: the targets, then one per source (or the jvp)."""
    out = [(req.infos[t].shape, req.infos[t].dtype) for t in req.targets]
    target = out[0][0]
    if req.mode == "jvp":
        return [*out, out[0]]
    for name in req.sources:
        src = req.tensors[name]
        if req.mode == "jacobian":
            shape = target + src.shape
        elif req.mode == "batch_jacobian":
            shape = target + src.shape[1:]
        elif req.mode == "hessian":
            shape = src.shape + src.shape
        else:
            shape = src.shape
        out.append((shape, src.dtype))
    return out


def _result_pointer(req: GradientRequest, index: int) -> str:
    """Where the request asks for the result's tensor at `index` (as result_tensors orders them)."""
    if index >= len(req.targets):
        return "/tangents" if req.mode == "jvp" else pointer("sources", index - len(req.targets))
    if req.target_is_list:
        return pointer("target", index)
    return "/expression" if req.expression else "/target"


def estimate(req: GradientRequest, tally: Tally, limits: Limits, errors: ErrorCollector) -> Cost:
    """Estimate the request's cost and refuse it (a limit error) where it is over a limit."""
    encoding = req.encoding
    result_bytes, raw_bytes = DOCUMENT_CHARS, 0
    for shape, dtype in result_tensors(req):
        chars, size = encoded_bytes(shape, dtype, encoding)
        result_bytes += ENTRY_CHARS + chars
        raw_bytes += size * ITEMSIZE[dtype]

    # The request's arrays are decoded (NumPy) and then copied into tensors: inputs count
    # twice, and output gradients or tangents (shaped like the targets or sources) twice too.
    held = tally.held_bytes + tally.input_bytes
    for t in (*(req.output_gradients or ()), *(req.tangents.values() if req.tangents else ())):
        held += 2 * bound_size(t.shape) * ITEMSIZE[t.dtype]
    conn, scratch = tally.connected_bytes, tally.scratch_bytes
    mode = req.mode
    if mode == "gradient":
        growth = 3**req.order - 1  # 2, 8, 26, 80: each nested tape records the levels below
        working = held + growth * conn + req.order * scratch
        flops = tally.flops + growth * tally.connected_flops
    elif mode == "jvp":
        working = held + JVP_FACTOR * conn + scratch
        flops = tally.flops + JVP_FACTOR * tally.connected_flops
    else:
        target = req.infos[req.targets[0]]
        if mode == "jacobian":
            lanes, factor = target.bound, PFOR_FACTOR
        elif mode == "batch_jacobian":
            lanes, factor = target.bound // max(target.shape[0], 1), PFOR_FACTOR
        else:
            lanes, factor = max(bound_size(req.tensors[s].shape) for s in req.sources), HESSIAN_FACTOR
        working = held + BACKWARD_FACTOR * conn + scratch + lanes * (factor * conn + scratch)
        backward = BACKWARD_FLOPS * tally.connected_flops
        flops = tally.flops + backward + lanes * factor * backward
    # The TF process holds the result's arrays and its encoding while it writes them out.
    cost = Cost(result_bytes, working + raw_bytes + result_bytes, flops)
    if (
        result_bytes > limits.max_result_bytes
        or cost.memory_bytes > limits.max_memory_bytes
        or flops > limits.max_flops
    ):
        _refuse(req, tally, cost, limits, errors)
    return cost


def _refuse(req: GradientRequest, tally: Tally, cost: Cost, limits: Limits, errors: ErrorCollector) -> None:
    if cost.result_bytes > limits.max_result_bytes:
        encoded = [encoded_bytes(shape, dtype, req.encoding)[0] for shape, dtype in result_tensors(req)]
        where = _result_pointer(req, max(range(len(encoded)), key=encoded.__getitem__))
        errors.limit(
            where,
            f"the result would take up to {human_bytes(cost.result_bytes)} as {req.encoding}, over the limit "
            f"max_result_bytes = {limits.max_result_bytes}",
            limit="max_result_bytes",
            maximum=limits.max_result_bytes,
            estimate=cost.result_bytes,
        )
    what = f"derivative of order {req.order}" if req.order > 1 else req.mode
    where, position = _blame(req, tally)
    if cost.memory_bytes > limits.max_memory_bytes:
        errors.limit(
            where,
            f"the {what} would need about {human_bytes(cost.memory_bytes)} of working memory, over the limit "
            f"max_memory_bytes = {limits.max_memory_bytes}",
            position,
            limit="max_memory_bytes",
            maximum=limits.max_memory_bytes,
            estimate=cost.memory_bytes,
        )
    if cost.flops > limits.max_flops:
        errors.limit(
            where,
            f"the {what} would need about {cost.flops:.2g} floating-point operations, over the limit "
            f"max_flops = {limits.max_flops}",
            position,
            limit="max_flops",
            maximum=limits.max_flops,
            estimate=cost.flops,
        )


def _blame(req: GradientRequest, tally: Tally) -> tuple[str, int | None]:
    """Point where a refusal for memory or compute is best fixed: the mode, the order, or the largest op."""
    if req.mode != "gradient":
        return "/mode", None
    if req.order > 1:
        return "/order", None
    if tally.biggest is not None:
        return tally.biggest.path, tally.biggest.position
    return ("/expression" if req.expression else "/ops"), None


def human_bytes(n: int) -> str:
    """Write a byte count for people: 5.2 GB, 640 MB, 12 kB (powers of 1000, as `df -H`)."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
