"""The tensor dtypes a request may use, as plain names (no TensorFlow here)."""

from __future__ import annotations

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
INT_DTYPES = ("int32", "int64")
DTYPES = (*FLOAT_DTYPES, *INT_DTYPES, "bool")
DEFAULT_DTYPE = "float32"

# Bytes per element, for `b64` payloads and for memory limits.
ITEMSIZE = {
    "float16": 2,
    "bfloat16": 2,
    "float32": 4,
    "float64": 8,
    "int32": 4,
    "int64": 8,
    "bool": 1,
}

INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
# TF turns list attrs (begin/end/strides, window sizes, shapes, paddings) into int32 tensors.
INT32_MIN, INT32_MAX = INT_RANGES["int32"]


def is_float(dtype: str) -> bool:
    """Say whether gradients exist for values of this dtype."""
    return dtype in FLOAT_DTYPES
