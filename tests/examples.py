"""The contract's examples, shared by the engine's, the API's and the end-to-end tests (plain data: no TensorFlow)."""

from __future__ import annotations

from typing import Any

EXAMPLE_1: dict[str, Any] = {"tensors": {"x": 3.0}, "expression": "x * x", "sources": ["x"]}
EXAMPLE_2: dict[str, Any] = {
    "tensors": {"x": {"fill": 3.0, "shape": [2, 3]}, "z": 5.0},
    "expression": "reduce_sum(x * x + 2 * z)",
    "sources": ["x", "z"],
}
EXAMPLE_2_GRAPH: dict[str, Any] = {
    "tensors": {
        "x": {"value": [[3, 3, 3], [3, 3, 3]], "dtype": "float32"},
        "z": {"value": 5.0},
    },
    "ops": [
        {"id": "xx", "op": "multiply", "inputs": ["x", "x"]},
        {"id": "z2", "op": "multiply", "inputs": [2.0, "z"]},
        {"id": "s", "op": "add", "inputs": ["xx", "z2"]},
        {"id": "y", "op": "reduce_sum", "inputs": ["s"], "attrs": {"axis": None}},
    ],
    "target": "y",
    "sources": ["x", "z"],
}
EXAMPLE_3: dict[str, Any] = {"tensors": {"x": 2.0}, "expression": "x**2 + 2*x - 1", "sources": ["x"]}
