"""Tensor documents to NumPy arrays and back: nested lists, non-finite strings, `b64`."""

from __future__ import annotations

import base64
from itertools import chain
from typing import Any

import ml_dtypes
import numpy as np
import orjson

from tapecore.tensors import TensorSpec

NUMPY_DTYPES: dict[str, Any] = {
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "bool": np.dtype("bool"),
}


def decode_tensor(spec: TensorSpec) -> np.ndarray:
    """Return the array a checked tensor document describes."""
    dtype = NUMPY_DTYPES[spec.dtype]
    if spec.b64 is not None:
        return np.frombuffer(base64.b64decode(spec.b64), dtype=dtype).reshape(spec.shape)
    if spec.fill is not None:
        return np.full(spec.shape, decode_value(spec.fill, spec.dtype), dtype=dtype)
    if not spec.shape:
        return decode_value(spec.value, spec.dtype)
    # The checked shape says how to flatten: no shape discovery, no float64 copy for float32
    # (MLP inputs: 0.64 ms, not 0.76). NumPy converts each element as np.asarray does.
    flat = spec.value
    for _ in spec.shape[1:]:
        flat = chain.from_iterable(flat)
    wide = dtype == NUMPY_DTYPES["bfloat16"]  # via float64 as before: ml_dtypes' casts are its own
    with np.errstate(over="ignore"):
        array = np.fromiter(flat, dtype=np.float64 if wide else dtype, count=spec.size)
        return (array.astype(dtype) if wide else array).reshape(spec.shape)


def decode_value(value: Any, dtype_name: str) -> np.ndarray:
    """Return a checked number or nested list (non-finite as strings) as an array of `dtype_name`.

    A number past the dtype's range becomes infinity, as `tf.constant` makes it.
    """
    dtype = NUMPY_DTYPES[dtype_name]
    if dtype.kind == "f" or dtype == NUMPY_DTYPES["bfloat16"]:
        # float() reads "NaN", "Infinity" and "-Infinity" too, so one conversion does it all.
        with np.errstate(over="ignore"):
            return np.asarray(value, dtype=np.float64).astype(dtype)
    return np.asarray(value, dtype=dtype)


def encode_array(array: np.ndarray, dtype: str, encoding: str = "json") -> dict[str, Any]:
    """Return the tensor document of an array: values (non-finite as strings) or b64.

    Finite values stay a NumPy array (or scalar), which orjson writes straight from memory,
    in the shortest form that reads back to the same float32 (0.1, not 0.10000000149).
    """
    shape = list(array.shape)
    if encoding == "b64":
        # Encoded from the array's own memory: a copy by tobytes() costs 4 MB of fresh pages (3 ms).
        raw = np.ascontiguousarray(array, dtype=NUMPY_DTYPES[dtype]).reshape(-1).view(np.uint8).data
        return {"b64": base64.b64encode(raw).decode("ascii"), "dtype": dtype, "shape": shape}
    if array.dtype == NUMPY_DTYPES["bfloat16"]:
        array = array.astype(np.float32)  # orjson writes float16/32/64, not bfloat16
    value: Any
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        wide = array.astype(np.float64)
        obj = wide.astype(object)
        obj[np.isnan(wide)] = "NaN"
        obj[wide == np.inf] = "Infinity"
        obj[wide == -np.inf] = "-Infinity"
        value = obj.tolist()
    elif array.ndim == 0:
        value = array.item()  # orjson takes arrays of rank >= 1 only
    else:
        value = np.ascontiguousarray(array)
    return {"value": value, "dtype": dtype, "shape": shape}


def least_json_bytes(document: Any) -> int:
    """A lower bound on the bytes `dumps` writes for a result document, from its arrays' shapes alone.

    Each element takes at least two bytes ("0,"; a bool five) and each list two brackets and a
    comma, so that a 0 in a shape hides nothing: [33554432, 0] is 33554432 empty rows, 100 MB.
    """
    if isinstance(document, dict):
        return sum(_least_value_bytes(v) if k == "value" else least_json_bytes(v) for k, v in document.items())
    if isinstance(document, list):
        return sum(least_json_bytes(v) for v in document)
    if isinstance(document, str):
        return len(document)
    return 0


def _least_value_bytes(value: Any) -> int:
    if not isinstance(value, np.ndarray):
        return 0  # a scalar, or nested lists made by encode_array for non-finite values: already walked
    lists, rows = 0, 1
    for dim in value.shape:
        lists += rows
        rows *= dim
    per_element = 5 if value.dtype == np.bool_ else 2
    return value.size * per_element + lists * 3


def dumps(document: Any) -> bytes:
    """Write a result document (NumPy arrays inside) as JSON."""
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


def python_document(document: Any) -> Any:
    """Return a result document with its arrays as nested lists: what `dumps` writes, as Python objects.

    Only tensor documents' "value" holds arrays; other lists (several targets, notes) are walked.
    """
    if isinstance(document, dict):
        return {k: _python_value(v) if k == "value" else python_document(v) for k, v in document.items()}
    if isinstance(document, list):
        return [python_document(v) for v in document]
    return document


def _python_value(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value  # encode_array leaves no NumPy scalars


def count_nonfinite(array: np.ndarray) -> int:
    """Count NaN and infinite entries (0 for non-float arrays)."""
    if array.dtype.kind != "f" and array.dtype != NUMPY_DTYPES["bfloat16"]:
        return 0
    if array.dtype == NUMPY_DTYPES["bfloat16"]:
        array = array.astype(np.float32)  # NumPy's isfinite has no bfloat16 loop
    return int(array.size - np.count_nonzero(np.isfinite(array)))
