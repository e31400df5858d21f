"""Nothing dangerous is reachable: by name, by alias, by expression, or by lookup on `tf`."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

from tapecore.errors import GraphError
from tapecore.ops import REGISTRY
from tapecore.registry import UnknownOp
from tapecore.request import parse_request

tf = pytest.importorskip("tensorflow")
ROOT = Path(__file__).resolve().parent.parent

# TensorFlow's ops that read or write files, reach the network, run Python, print, draw
# random numbers, or hold resources and variants. None may be reachable.
DANGEROUS = [
    "io.read_file",
    "io.write_file",
    "io.matching_files",
    "io.gfile.GFile",
    "io.decode_image",
    "print",
    "debugging.assert_equal",
    "py_function",
    "numpy_function",
    "compat.v1.py_func",
    "random.uniform",
    "random.normal",
    "random.shuffle",
    "random.stateless_uniform",
    "nn.dropout",
    "Variable",
    "TensorArray",
    "while_loop",
    "cond",
    "map_fn",
    "vectorized_map",
    "scan",
    "load_op_library",
    "load_library",
    "raw_ops.ReadFile",
    "raw_ops.WriteFile",
    "raw_ops.PyFunc",
    "raw_ops.RandomUniform",
    "raw_ops.Print",
    "raw_ops.VarHandleOp",
    "data.Dataset.from_tensor_slices",
    "summary.scalar",
    "saved_model.load",
    "strings.format",
    "lookup.StaticHashTable",
    "queue.FIFOQueue",
    "audio.decode_wav",
    "image.decode_png",
]
BAD_PREFIXES = ("io.", "raw_ops.", "random.", "compat.", "data.", "summary.", "saved_model.", "debugging.", "queue.")


def resolve(name: str) -> object:
    return functools.reduce(getattr, name.split("."), tf)


@pytest.mark.parametrize("name", DANGEROUS)
def test_dangerous_names_are_not_registered(name: str) -> None:
    with pytest.raises(UnknownOp):
        REGISTRY.resolve(name)


@pytest.mark.parametrize("name", DANGEROUS)
def test_dangerous_names_are_refused_in_graphs_and_expressions(name: str) -> None:
    graph = {"tensors": {"x": 1.0}, "ops": [{"id": "y", "op": name, "inputs": ["x"]}], "target": "y", "sources": ["x"]}
    with pytest.raises(GraphError):
        parse_request(graph)
    with pytest.raises(GraphError):
        parse_request({"tensors": {"x": 1.0}, "expression": f"{name}(x)", "sources": ["x"]})


def test_no_registered_name_or_alias_is_a_dangerous_function() -> None:
    dangerous = set()
    for name in DANGEROUS:
        try:
            dangerous.add(id(resolve(name)))
        except AttributeError:
            continue
    for name in REGISTRY.names():
        assert not name.startswith(BAD_PREFIXES), name
        assert id(resolve(name)) not in dangerous, name


def test_no_code_looks_ops_up_by_name_on_tf() -> None:
    lookup = re.compile(r"getattr\(\s*tf\b|tf\.__dict__|vars\(\s*tf\s*\)|importlib")
    for path in [*ROOT.glob("worker/**/*.py"), *ROOT.glob("service/**/*.py")]:
        assert not lookup.search(path.read_text()), f"{path} looks something up by name"
