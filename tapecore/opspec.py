"""What an op is, as plain data: its inputs, attrs, shape rule, examples and TF function.

No TensorFlow is imported here. `OpSpec.fn` receives the `tf` module as its first argument
from the engine, so the table stays importable by the API while naming, in code, exactly
which TensorFlow function runs (nothing is looked up by name on `tf`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .dtypes import FLOAT_DTYPES, INT_DTYPES
from .errors import short_repr


@dataclass(frozen=True)
class TensorInfo:
    """The static shape and dtype of one tensor in the graph."""

    shape: tuple[int, ...]
    dtype: str
    # Elements counted with every zero dimension as 1, so that a 0 cannot hide the others:
    # the size every limit counts. Computed once here; limits read it for every tensor.
    bound: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.__dict__["bound"] = bound_size(self.shape)  # frozen: set as object.__setattr__ would, at half its cost

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def rank(self) -> int:
        return len(self.shape)


def bound_size(shape: Sequence[int]) -> int:
    """Return prod(max(d, 1)): the size every limit counts (an empty [n, 0] still costs n rows)."""
    return math.prod(shape) if 0 not in shape else math.prod(d or 1 for d in shape)


class OpCost(NamedTuple):
    """What one op costs when it runs forwards: floating-point operations and scratch elements."""

    flops: int
    scratch: int = 0  # elements of temporary buffers the kernel allocates besides its outputs


def elementwise_cost(inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> OpCost:
    """The default cost rule: every input and output element touched once."""
    n = 0
    for t in inputs:
        n += t.bound
    for t in outputs:
        n += t.bound
    return OpCost(n)


class ShapeError(Exception):
    """An op's inputs or attrs do not fit together; raised by shape rules.

    `input` or `attr` says where the fault lies, so the error can point there.
    """

    def __init__(self, message: str, *, input: int | None = None, attr: str | None = None):
        super().__init__(message)
        self.message = message
        self.input = input
        self.attr = attr


class AttrError(Exception):
    """An attr value has the wrong type or is out of its bounds."""


REQUIRED: Any = object()  # the default of an attr that must be given

ATTR_KINDS = (
    "int",  # an integer, with optional bounds
    "float",  # a number
    "bool",
    "string",  # a short string (an einsum equation, a padding mode)
    "axis",  # an integer axis (negative counts from the end)
    "axes",  # an integer axis or a list of them
    "ints",  # a list of integers (a permutation, begin/size, multiples)
    "int_or_ints",  # an integer or a list of them (pool sizes, strides)
    "shape",  # a list of non-negative integers (or -1 once, for reshape)
    "int_matrix",  # a list of lists of integers (pad's paddings)
    "dtype",  # a dtype name
)

MAX_ATTR_LIST = 64  # entries of any list-valued attr; ranks are far below this
MAX_ATTR_STRING = 256  # characters of a string attr


@dataclass(frozen=True)
class AttrSpec:
    """One non-tensor keyword argument of an op."""

    name: str
    kind: str
    default: Any = REQUIRED
    doc: str = ""
    nullable: bool = False  # None is accepted (TF's "all axes" for reductions, say)
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def check(self, value: Any) -> Any:
        """Return the value normalised for TensorFlow, or raise AttrError saying why not."""
        if value is None:
            if self.nullable:
                return None
            raise AttrError(f"must not be null ({self.describe_type()})")
        kind = self.kind
        if kind in ("int", "axis"):
            out: Any = _int(value)
            self._bounds(out)
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise AttrError(f"must be a number, not {_json_type(value)}")
            out = float(value)
            self._bounds(out)
        elif kind == "bool":
            if not isinstance(value, bool):
                raise AttrError(f"must be true or false, not {_json_type(value)}")
            out = value
        elif kind == "string":
            if not isinstance(value, str):
                raise AttrError(f"must be a string, not {_json_type(value)}")
            if len(value) > MAX_ATTR_STRING:
                raise AttrError(f"must be at most {MAX_ATTR_STRING} characters")
            out = value
        elif kind in ("axes", "int_or_ints"):
            out = _int(value) if not isinstance(value, list) else _ints(value)
            for v in [out] if isinstance(out, int) else out:
                self._bounds(v)
        elif kind in ("ints", "shape"):
            if not isinstance(value, list):
                raise AttrError(f"must be a list of integers, not {_json_type(value)}")
            out = _ints(value)
            if kind == "shape":
                if sum(1 for d in out if d == -1) > 1 or any(d < -1 for d in out):
                    raise AttrError("dimensions must be non-negative (one -1 at most)")
            for v in out:
                self._bounds(v)
        elif kind == "int_matrix":
            if not isinstance(value, list) or len(value) > MAX_ATTR_LIST:
                raise AttrError("must be a list of lists of integers")
            out = [_ints(row) if isinstance(row, list) else _bad_row(row) for row in value]
            for row in out:
                for v in row:
                    self._bounds(v)
        elif kind == "dtype":
            if value not in (self.choices or (*FLOAT_DTYPES, *INT_DTYPES, "bool")):
                allowed = ", ".join(self.choices or (*FLOAT_DTYPES, *INT_DTYPES, "bool"))
                raise AttrError(f"must be one of {allowed}, not {short_repr(value)}")
            out = value
        else:  # pragma: no cover - a registry bug, caught by the registry tests
            raise AssertionError(f"unknown attr kind {kind}")
        if self.choices is not None and kind != "dtype" and out not in self.choices:
            raise AttrError(f"must be one of {', '.join(map(repr, self.choices))}, not {short_repr(value)}")
        return out

    def _bounds(self, v: float) -> None:
        if self.minimum is not None and v < self.minimum:
            raise AttrError(f"must be at least {_num(self.minimum)}, not {_num(v)}")
        if self.maximum is not None and v > self.maximum:
            raise AttrError(f"must be at most {_num(self.maximum)}, not {_num(v)}")

    def describe_type(self) -> str:
        names = {
            "int": "integer",
            "float": "number",
            "bool": "boolean",
            "string": "string",
            "axis": "integer axis",
            "axes": "integer axis or list of axes",
            "ints": "list of integers",
            "int_or_ints": "integer or list of integers",
            "shape": "list of dimensions",
            "int_matrix": "list of lists of integers",
            "dtype": "dtype name",
        }
        return names[self.kind] + (" or null" if self.nullable else "")

    def describe(self) -> dict[str, Any]:
        """Describe this attr for `GET /v1/ops`."""
        out: dict[str, Any] = {"name": self.name, "type": self.describe_type(), "required": self.required}
        if not self.required:
            out["default"] = self.default
        for key in ("minimum", "maximum"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.choices is not None:
            out["choices"] = list(self.choices)
        if self.doc:
            out["description"] = self.doc
        return out


@dataclass(frozen=True)
class Sample:
    """A deterministic test input of an op's example: a shape and a domain, or a value."""

    shape: tuple[int, ...] = ()
    dtype: str = "float64"
    low: float = -2.0
    high: float = 2.0
    value: Any = None  # explicit nested list (indices, labels, well-conditioned matrices)


@dataclass(frozen=True)
class Example:
    """One call of an op that the generated tests check against TF and finite differences."""

    inputs: tuple[Sample, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    # Input indices whose gradient is not checked (indices, labels, conditions).
    skip_grad: tuple[int, ...] = ()
    # Finite differences are unreliable near kinks; the sample domains avoid them, and
    # tolerance can be widened per example when an op's gradient is ill-conditioned.
    tolerance: float = 1e-5


InferFn = Callable[[Sequence[TensorInfo], Mapping[str, Any]], Sequence[TensorInfo]]
CostFn = Callable[[Sequence[TensorInfo], Sequence[TensorInfo], Mapping[str, Any]], OpCost]


@dataclass(frozen=True)
class OpSpec:
    """One entry of the op registry."""

    name: str  # TensorFlow's public name without `tf.`
    doc: str  # one line for `GET /v1/ops`
    fn: Callable[..., Any]  # fn(tf, *tensors, **attrs) -> tensor or tuple of tensors
    infer: InferFn  # static shapes and dtypes of the outputs; raises ShapeError
    inputs: tuple[str, ...] = ("x",)
    attrs: tuple[AttrSpec, ...] = ()
    aliases: tuple[str, ...] = ()
    category: str = ""
    variadic: bool = False  # the single input takes 1..n tensors (add_n, concat, stack)
    min_inputs: int = 1  # for variadic ops
    optional_inputs: int = 0  # trailing inputs that may be left out
    int_inputs: tuple[int, ...] = ()  # inputs that are integer indices (literals become int32)
    differentiable: bool = True  # False for comparisons, rounding, sign: TF gives no gradient
    examples: tuple[Example, ...] = ()
    # TensorFlow's function for this op, as written in hand-written code: the generated tests
    # compare `fn` against it. Defaults to `name`.
    tf_name: str | None = None
    # The forward cost of one call, from its static inputs, outputs and attrs: the cost model
    # (tapecore/cost.py) derives the backward pass and each mode from it.
    cost: CostFn = elementwise_cost

    def attr(self, name: str) -> AttrSpec | None:
        for a in self.attrs:
            if a.name == name:
                return a
        return None

    def arity_text(self) -> str:
        if self.variadic:
            return f"at least {self.min_inputs} input{'s' if self.min_inputs != 1 else ''}"
        lo = len(self.inputs) - self.optional_inputs
        hi = len(self.inputs)
        if lo == hi:
            return f"{hi} input{'s' if hi != 1 else ''} ({', '.join(self.inputs)})"
        return f"{lo} to {hi} inputs ({', '.join(self.inputs)})"

    def describe(self) -> dict[str, Any]:
        """Describe this op for `GET /v1/ops`."""
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "category": self.category,
            "description": self.doc,
            "inputs": list(self.inputs),
            "variadic": self.variadic,
            "optional_inputs": self.optional_inputs,
            "attrs": [a.describe() for a in self.attrs],
            "differentiable": self.differentiable,
        }


# --- shape rules shared by many ops -------------------------------------------------------


def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """Return the NumPy/TensorFlow broadcast of these shapes, or raise ShapeError."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[int] = []
    for axis in range(-rank, 0):
        dims = {s[axis] for s in shapes if len(s) >= -axis} - {1}
        if len(dims) > 1:
            raise ShapeError("shapes " + ", ".join(str(list(s)) for s in shapes) + " do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def common_dtype(inputs: Sequence[TensorInfo]) -> str:
    """Return the one dtype these inputs share, or raise ShapeError naming the odd one."""
    first = inputs[0].dtype
    for i, t in enumerate(inputs[1:], start=1):
        if t.dtype != first:
            raise ShapeError(f"dtype {t.dtype} does not match input 0's {first}", input=i)
    return first


def require_float(inputs: Sequence[TensorInfo], *which: int) -> None:
    """Raise ShapeError unless the given inputs (default: all) are floating point."""
    for i in which or range(len(inputs)):
        if inputs[i].dtype not in FLOAT_DTYPES:
            raise ShapeError(f"needs a floating-point tensor, not {inputs[i].dtype}", input=i)


def normalize_axis(axis: int, rank: int, attr: str = "axis") -> int:
    """Return `axis` as a non-negative index into a tensor of this rank."""
    if not -rank <= axis < max(rank, 1):
        raise ShapeError(f"axis {axis} is out of range for a tensor of rank {rank}", attr=attr)
    return axis % rank if rank else 0


def same_as_input(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    """Shape rule of element-wise unary ops on floats."""
    require_float(inputs, 0)
    return [inputs[0]]


def elementwise(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    """Shape rule of element-wise ops with broadcasting over all inputs."""
    dtype = common_dtype(inputs)
    return [TensorInfo(broadcast_shapes(*(t.shape for t in inputs)), dtype)]


def comparison(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    """Shape rule of comparisons: broadcast, bool result."""
    common_dtype(inputs)
    return [TensorInfo(broadcast_shapes(*(t.shape for t in inputs)), "bool")]


def reduced(inputs: Sequence[TensorInfo], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    """Shape rule of reductions with `axis` (None, int or list) and `keepdims`."""
    x = inputs[0]
    axis = attrs.get("axis")
    keep = bool(attrs.get("keepdims", False))
    if axis is None:
        axes = set(range(x.rank))
    else:
        raw = [axis] if isinstance(axis, int) else list(axis)
        axes = {normalize_axis(a, x.rank) for a in raw}
        if len(axes) != len(raw):
            raise ShapeError("axis lists the same axis twice", attr="axis")
    shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape) if keep or i not in axes)
    return [TensorInfo(shape, x.dtype)]


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise AttrError(f"must be an integer, not {_json_type(value)}")
    return value


def _ints(value: list[Any]) -> list[int]:
    if len(value) > MAX_ATTR_LIST:
        raise AttrError(f"must have at most {MAX_ATTR_LIST} entries")
    return [_int(v) for v in value]


def _bad_row(row: Any) -> list[int]:
    raise AttrError(f"rows must be lists of integers, not {_json_type(row)}")


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
