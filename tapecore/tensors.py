"""Tensor documents (`value`, `fill`, `b64`, shorthand) read and checked without TensorFlow."""

from __future__ import annotations

import base64
import math
import operator
import string
import sys
from array import array
from dataclasses import dataclass
from itertools import chain
from typing import Any

from .dtypes import DEFAULT_DTYPE, DTYPES, FLOAT_DTYPES, INT_RANGES, ITEMSIZE
from .errors import ErrorCollector, FieldError, TensorTooLarge, pointer, short_repr
from .limits import Limits
from .opspec import bound_size

# The proto3 JSON spelling of non-finite floats, accepted in requests and written in results.
NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
TENSOR_KEYS = frozenset({"value", "fill", "b64", "dtype", "shape"})
B64_ALPHABET = (string.ascii_letters + string.digits + "+/").encode("ascii")
# `array` typecodes of the dtypes whose values pack to `b64` without NumPy (none has a half
# float); a dtype whose C type has another size on this platform stays JSON.
PACK_TYPECODES = {
    dtype: code
    for dtype, code in {"float32": "f", "float64": "d", "int32": "i", "int64": "q", "bool": "B"}.items()
    if array(code).itemsize == ITEMSIZE[dtype]
}


@dataclass(frozen=True)
class TensorSpec:
    """A checked tensor document: its dtype, shape and one of value, fill or b64."""

    dtype: str
    shape: tuple[int, ...]
    value: Any = None  # a number or rectangular nested list; non-finite as NONFINITE strings
    fill: Any = None  # a number (or NONFINITE string) repeated over `shape`
    b64: str | None = None  # raw little-endian bytes, base64

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def as_document(self) -> dict[str, Any]:
        """Return the normalised document, as the worker receives it."""
        doc: dict[str, Any] = {"dtype": self.dtype, "shape": list(self.shape)}
        if self.b64 is not None:
            doc["b64"] = self.b64
        elif self.fill is not None:
            doc["fill"] = self.fill
        else:
            doc["value"] = self.value
        return doc


def parse_tensor(
    raw: Any,
    path: str,
    errors: ErrorCollector,
    limits: Limits,
    *,
    default_dtype: str = DEFAULT_DTYPE,
    check_values: bool = True,
) -> TensorSpec | None:
    """Check one tensor document at `path`; return it normalised, or None after adding errors.

    `check_values=False` trusts the elements of `value` (already checked by the API) and
    checks everything else: the walk over every element is the one O(n) step.
    """
    if not isinstance(raw, dict):
        if isinstance(raw, bool):
            errors.add(path, 'a boolean tensor needs the object form: {"value": true, "dtype": "bool"}')
            return None
        if isinstance(raw, int | float | list) or (isinstance(raw, str) and raw in NONFINITE):
            raw = {"value": raw}
        else:
            errors.add(path, "must be a number, a nested list of numbers, or a tensor object")
            return None
    before = len(errors.errors) + len(errors.limit_errors)
    for key in raw:
        if key not in TENSOR_KEYS:
            errors.add(pointer_join(path, key), "unknown field (a tensor has value, fill or b64, dtype, shape)")
    given = [k for k in ("value", "fill", "b64") if k in raw]
    if len(given) != 1:
        what = "one of" if not given else "only one of"
        errors.add(path, f"must have {what} 'value', 'fill' or 'b64'")
        return None
    kind = given[0]

    dtype = raw.get("dtype", default_dtype)
    if dtype not in DTYPES:
        errors.add(pointer_join(path, "dtype"), f"unknown dtype {short_repr(dtype)}; one of {', '.join(DTYPES)}")
        return None

    shape: tuple[int, ...] | None = None
    if "shape" in raw:
        shape = _parse_shape(raw["shape"], pointer_join(path, "shape"), errors, limits)
        if shape is None:
            return None
    elif kind != "value":
        errors.add(pointer_join(path, "shape"), f"is required with '{kind}'")
        return None

    if kind == "value":
        value = raw["value"]
        vpath = pointer_join(path, "value")
        inferred = _infer_shape(value, vpath, errors, limits)
        if inferred is None:
            return None
        if shape is not None and shape != inferred:
            errors.add(pointer_join(path, "shape"), f"is {list(shape)} but the value has shape {list(inferred)}")
            return None
        _check_size(inferred, path, limits)
        if check_values:
            _check_elements(value, inferred, vpath, dtype, errors)
        spec = TensorSpec(dtype, inferred, value=value)
    elif kind == "fill":
        assert shape is not None
        _check_size(shape, path, limits)
        _check_elements(raw["fill"], (), pointer_join(path, "fill"), dtype, errors)
        spec = TensorSpec(dtype, shape, fill=raw["fill"])
    else:
        assert shape is not None
        _check_size(shape, path, limits)
        data = raw["b64"]
        bpath = pointer_join(path, "b64")
        if not isinstance(data, str):
            errors.add(bpath, "must be a base64 string")
            return None
        nbytes = b64_size(data)
        if nbytes is None:
            errors.add(bpath, "is not valid base64")
            return None
        want = math.prod(shape) * ITEMSIZE[dtype]
        if nbytes != want:
            errors.add(bpath, f"holds {nbytes} bytes; shape {list(shape)} of {dtype} needs {want}")
            return None
        spec = TensorSpec(dtype, shape, b64=data)
    if len(errors.errors) + len(errors.limit_errors) > before:
        return None
    return spec


def pointer_join(base: str, *parts: str | int) -> str:
    return base + pointer(*parts)


def b64_size(data: str) -> int | None:
    """Return how many bytes `base64.b64decode(data, validate=True)` makes, or None where it refuses `data`.

    Counting instead of decoding takes a sixth of the time (docs/performance.md), and the
    API only needs the count. The rules are b64decode's strict mode (Python 3.11; a test
    compares them over every short string): the alphabet, then the padding the last group
    needs, where a complete last group takes any number of "=" (but "=" alone does not).
    """
    if not data.isascii():
        return None
    raw = data.encode("ascii")
    digits = raw.rstrip(b"=")
    if digits.translate(None, B64_ALPHABET):
        return None
    groups, rest = divmod(len(digits), 4)
    pads = len(raw) - len(digits)
    if (rest, pads) in ((2, 2), (3, 1)) or (rest == 0 and (groups or not pads)):
        return groups * 3 + max(rest - 1, 0)
    return None


def packed(spec: TensorSpec) -> dict[str, Any] | None:
    """Return a checked `value` tensor as the `b64` document of the same array, or None where it stays JSON.

    The API hands big tensors to the worker this way: the worker reads base64 about four times
    faster than JSON numbers (docs/performance.md). The `array` module rounds to float32 as NumPy does
    (a C cast: to nearest, past the range to infinity; a test compares them). Non-finite
    strings, ints past a double and half floats are left as they are.
    """
    typecode = PACK_TYPECODES.get(spec.dtype)
    if spec.value is None or typecode is None:
        return None
    rows = _innermost_rows(spec.value, spec.shape) if spec.shape else [[spec.value]]
    if rows is None:
        return None
    values = array(typecode)
    try:
        for row in rows:
            values.fromlist(row)  # a list at a time: faster than array(typecode, iterator)
    except (TypeError, OverflowError):
        return None
    if sys.byteorder == "big":
        values.byteswap()  # b64 holds little-endian bytes
    data = base64.b64encode(values).decode("ascii")
    return {"b64": data, "dtype": spec.dtype, "shape": list(spec.shape)}


def _parse_shape(raw: Any, path: str, errors: ErrorCollector, limits: Limits) -> tuple[int, ...] | None:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in raw):
        errors.add(path, "must be a list of non-negative integers")
        return None
    if len(raw) > limits.max_rank:
        errors.limit(path, f"rank {len(raw)} is over the limit max_rank = {limits.max_rank}")
        return None
    if any(d < 0 for d in raw):
        errors.add(path, "dimensions must be non-negative")
        return None
    return tuple(raw)


def _check_size(shape: tuple[int, ...], path: str, limits: Limits) -> None:
    """Refuse a tensor over its size limits (413), counting a zero dimension as 1.

    A [33554432, 0] tensor holds nothing, yet each of its rows is a bracket pair in JSON and
    an entry in every gradient's bookkeeping; counted as prod(shape) a zero hides the rest.
    """
    if shape and max(shape) > limits.max_dimension:
        axis, d = max(enumerate(shape), key=lambda item: item[1])
        message = f"axis {axis} of length {d} is over the limit max_dimension = {limits.max_dimension}"
        raise TensorTooLarge(FieldError(path, message, limit="max_dimension", maximum=limits.max_dimension, estimate=d))
    size = bound_size(shape)
    if size > limits.max_tensor_elements:
        counted = "elements" if 0 not in shape else "elements (a zero dimension counted as 1)"
        message = f"{size} {counted} is over the limit max_tensor_elements = {limits.max_tensor_elements}"
        raise TensorTooLarge(
            FieldError(path, message, limit="max_tensor_elements", maximum=limits.max_tensor_elements, estimate=size)
        )


def _infer_shape(value: Any, path: str, errors: ErrorCollector, limits: Limits) -> tuple[int, ...] | None:
    """Read the shape off the first element at each depth; _check_elements checks the rest."""
    shape: list[int] = []
    v = value
    while isinstance(v, list):
        if len(shape) >= limits.max_rank:
            errors.limit(path, f"nesting is deeper than the limit max_rank = {limits.max_rank}")
            return None
        shape.append(len(v))
        if not v:
            break
        v = v[0]
    return tuple(shape)


def _check_elements(value: Any, shape: tuple[int, ...], path: str, dtype: str, errors: ErrorCollector) -> None:
    """Check that `value` is rectangular with this shape and every element fits `dtype`."""
    ok = _element_check(dtype)
    if not shape:
        if isinstance(value, list) or not ok(value):
            errors.add(path, _element_message(value, dtype))
        return
    if _fits(value, shape, dtype):
        return  # the common case, at C speed; the walk below finds the first bad element
    stack: list[tuple[Any, int, str]] = [(value, 0, path)]
    last = len(shape) - 1
    fast_types = _FAST_TYPES.get(dtype, frozenset({int}))
    int_range = dtype in INT_RANGES
    lo, hi = INT_RANGES.get(dtype, (0, 0))
    while stack:
        v, depth, p = stack.pop()
        if not isinstance(v, list) or len(v) != shape[depth]:
            got = f"length {len(v)}" if isinstance(v, list) else "a scalar"
            message = f"is {got} but the shape says {shape[depth]} here: nested lists must be rectangular"
            errors.add(p, message)
            return
        if depth == last:
            # set(map(type, row)) runs in C: half the time of a per-element Python check.
            if set(map(type, v)) <= fast_types and (not int_range or not v or (min(v) >= lo and max(v) <= hi)):
                continue
            if not all(map(ok, v)):
                for i, e in enumerate(v):
                    if not ok(e):
                        errors.add(f"{p}/{i}", _element_message(e, dtype))
                        return
        else:
            stack.extend((child, depth + 1, f"{p}/{i}") for i, child in enumerate(v))


def _fits(value: Any, shape: tuple[int, ...], dtype: str) -> bool:
    """Say whether `value` is rectangular with this shape (rank >= 1) and every element fits `dtype`.

    Each pass is a builtin over an iterator, with no Python per element unless non-finite
    strings are present (docs/performance.md has the figures).
    False is only a "don't know": the walk decides, and says where.
    """
    rows = _innermost_rows(value, shape)
    if rows is None:
        return False
    count = len(rows) * shape[-1]
    if dtype in FLOAT_DTYPES:
        if operator.countOf(map(type, chain.from_iterable(rows)), float) == count:
            return True
        types = set(map(type, chain.from_iterable(rows)))
        if types <= _FAST_TYPES[dtype]:
            return True
        strings = {e for e in chain.from_iterable(rows) if type(e) is str}
        return types <= {float, int, str} and strings <= NONFINITE.keys()
    if dtype == "bool":
        return operator.countOf(map(type, chain.from_iterable(rows)), bool) == count
    lo, hi = INT_RANGES[dtype]
    if operator.countOf(map(type, chain.from_iterable(rows)), int) != count:
        return False
    return count == 0 or (min(chain.from_iterable(rows)) >= lo and max(chain.from_iterable(rows)) <= hi)


def _innermost_rows(value: Any, shape: tuple[int, ...]) -> list[list[Any]] | None:
    """Return the innermost lists of `value` if its lists nest rectangularly as `shape` says, else None."""
    rows = [value]
    for depth, n in enumerate(shape):
        if operator.countOf(map(type, rows), list) != len(rows) or not set(map(len, rows)) <= {n}:
            return None
        if depth < len(shape) - 1:
            rows = list(chain.from_iterable(rows))
    return rows


# Element types that need no further look, by dtype (ints are range-checked as a row).
_FAST_TYPES = {**{d: frozenset({float, int}) for d in FLOAT_DTYPES}, "bool": frozenset({bool})}


def _element_check(dtype: str) -> Any:
    if dtype in FLOAT_DTYPES:
        return lambda e: type(e) is float or type(e) is int or (type(e) is str and e in NONFINITE)
    if dtype == "bool":
        return lambda e: type(e) is bool
    lo, hi = INT_RANGES[dtype]
    return lambda e: type(e) is int and lo <= e <= hi


def _element_message(e: Any, dtype: str) -> str:
    if dtype in FLOAT_DTYPES:
        return f'must be a number or one of "NaN", "Infinity", "-Infinity" for {dtype}, not {short_repr(e)}'
    if dtype == "bool":
        return f"must be true or false for bool, not {short_repr(e)}"
    return f"must be an integer within {dtype}'s range, not {short_repr(e)}"
