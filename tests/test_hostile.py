"""Hostile input: random and mutated documents, random expressions, random valid graphs against
hand-written TensorFlow, and every edge case and limit with its status through the API."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from tapecore.errors import TapeserveError
from tapecore.limits import Limits
from tapecore.ops import REGISTRY
from tapecore.request import FIELDS, MODES, OP_FIELDS, GradientRequest, Ref, parse_request
from tapecore.tensors import NONFINITE, TENSOR_KEYS
from tests.conftest import ROOT
from tests.examples import EXAMPLE_1, EXAMPLE_2, EXAMPLE_2_GRAPH, EXAMPLE_3

PROBLEM = "application/problem+json"

# Small enough that nothing a mutated document asks for costs more than milliseconds to run.
SMALL = Limits(
    max_ops=24,
    max_tensors=8,
    max_tensor_elements=64,
    max_rank=4,
    max_order=3,
    max_intermediate_elements=512,
    max_result_elements=512,
    max_total_elements=4_096,
    max_expression_length=512,
    max_expression_depth=40,
)
# Examples per property: enough to find the bugs below in CI's two minutes; set
# TAPESERVE_FUZZ_EXAMPLES=5000 for a deeper run by hand.
FUZZ = settings(
    max_examples=int(os.environ.get("TAPESERVE_FUZZ_EXAMPLES", 200)),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# --- valid documents to start from ----------------------------------------------------------

SEEDS: list[dict[str, Any]] = [
    EXAMPLE_1,
    EXAMPLE_2,
    EXAMPLE_2_GRAPH,
    EXAMPLE_3,
    {**EXAMPLE_1, "mode": "jacobian"},
    {**EXAMPLE_1, "mode": "hessian"},
    {**EXAMPLE_1, "order": 2},
    {**EXAMPLE_1, "mode": "jvp", "tangents": {"x": 0.5}},
    {**EXAMPLE_2, "unconnected_gradients": "zero", "encoding": "b64", "device": "cpu"},
    {"tensors": {"x": [[1.0, 2.0], [3.0, 4.0]]}, "expression": "x * x", "sources": ["x"], "mode": "batch_jacobian"},
    {
        "tensors": {"x": [[1.0, 2.0, 3.0]], "w": {"value": [[0.5], [0.25], [2.0]], "dtype": "float64"}},
        "expression": "reduce_sum(tanh(cast(x, dtype='float64') @ w), axis=None)",
        "sources": ["w"],
    },
    {
        "tensors": {"a": [[1.0, 2.0], [3.0, 4.0]], "i": {"value": [1, 0], "dtype": "int32"}},
        "ops": [
            {"id": "u", "op": "unstack", "inputs": ["a"], "attrs": {"axis": 0}},
            {"id": "g", "op": "gather", "inputs": ["a", "i"]},
            {"id": "m", "op": "multiply", "inputs": ["u:1", "g"]},
            {"id": "c", "op": "concat", "inputs": ["m", "a"], "attrs": {"axis": 0}},
            {"id": "r", "op": "reshape", "inputs": ["c"], "attrs": {"shape": [2, 4]}},
        ],
        "target": ["r", "u:1"],
        "sources": ["a"],
        "output_gradients": [[[1.0] * 4, [0.5] * 4], [2.0, 2.0]],
    },
    {
        "tensors": {
            "x": {"b64": base64.b64encode(np.arange(6, dtype="<f4").tobytes()).decode(), "shape": [2, 3]},
            "b": {"value": [True, False, True], "dtype": "bool"},
        },
        "ops": [
            {"id": "t", "op": "tile", "inputs": ["x"], "attrs": {"multiples": [2, 1]}},
            {"id": "p", "op": "pad", "inputs": ["x"], "attrs": {"paddings": [[1, 0], [0, 1]]}},
            {"id": "w", "op": "where", "inputs": ["b", "x", 0.0]},
            {"id": "e", "op": "einsum", "inputs": ["t", "p"], "attrs": {"equation": "ij,jk->ik"}},
            {"id": "s", "op": "add_n", "inputs": ["w", "w"]},
            {"id": "y", "op": "reduce_mean", "inputs": ["e"], "attrs": {"axis": [0, 1], "keepdims": True}},
        ],
        "target": "y",
        "sources": ["x"],
    },
    {
        "tensors": {"x": {"fill": 0.5, "shape": [1, 4, 4, 1]}, "k": {"fill": 1.0, "shape": [2, 2, 1, 1]}},
        "expression": "reduce_sum(nn.max_pool2d(nn.conv2d(x, k, strides=1, padding='SAME'), ksize=2, strides=2, "
        "padding='VALID'))",
        "sources": ["x", "k"],
    },
]


def registry_seeds() -> list[dict[str, Any]]:
    """One document per example of every registered op, so that mutations reach every op."""
    rng = np.random.default_rng(0)
    out = []
    for spec in REGISTRY:
        for example in spec.examples:
            tensors: dict[str, Any] = {}
            for k, sample in enumerate(example.inputs):
                if sample.value is not None:
                    value = sample.value
                elif sample.dtype == "bool":
                    value = (rng.random(sample.shape) < 0.5).tolist()
                elif sample.dtype.startswith("int"):
                    value = rng.integers(int(sample.low), int(sample.high), sample.shape).tolist()
                else:
                    value = rng.uniform(sample.low, sample.high, sample.shape).tolist()
                tensors[f"t{k}"] = {"value": value, "dtype": sample.dtype}
            sources = [
                f"t{k}" for k, s in enumerate(example.inputs) if k not in example.skip_grad and "float" in s.dtype
            ]
            doc = {
                "tensors": tensors,
                "ops": [{"id": "y", "op": spec.name, "inputs": list(tensors), "attrs": dict(example.attrs)}],
                "target": "y",
                "sources": sources,
            }
            try:
                parse_request(copy.deepcopy(doc), REGISTRY, SMALL)
            except TapeserveError:
                continue  # an example over the small limits, or of an op without a gradient
            out.append(doc)
    return out


REGISTRY_SEEDS = registry_seeds()

# --- hostile values -------------------------------------------------------------------------

OP_NAMES = REGISTRY.names()
ATTR_NAMES = sorted({a.name for spec in REGISTRY for a in spec.attrs})
NAMES = [
    *("x", "z", "w", "a", "i", "b", "k", "u", "g", "xx", "y", "_e1", "_e2"),
    *("u:1", "u:2", "x:1", "u:99999", "é", "x" * 64, "x" * 65, "1x", "x-y", "", " x", "x\u0000", "\U0001f600"),
    *("__proto__", "constructor", "tensors", "NaN", "Infinity", "-Infinity"),
]
HUGE_NUMBERS: list[int | float] = [
    *(2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**400),
    *(1e308, -1e308, 5e-324, 1e-320, 3.4028236e38, 65505.0, -0.0, 0.5, 1.5),
]
SHAPE_DIMS = [10**5, 10**10, 2**31, 2**63, -(2**63), -1, 1024]
ATTR_STRINGS = ["VALID", "SAME", "CONSTANT", "reflect", "NHWC", "NCHW", "ij,jk->ik", "...i,i", "ii->i", "->", ","]
WORDS = [*FIELDS, *OP_FIELDS, *TENSOR_KEYS, *ATTR_NAMES, *MODES, "float16", "bfloat16", "int64", "bool", "complex64"]

# Lone surrogates cannot arrive: orjson refuses them in a body (400), so the worker never sees one.
TEXT = st.characters(exclude_categories=["Cs"])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-4, 8),
    st.sampled_from(HUGE_NUMBERS),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(TEXT, max_size=6),
    st.sampled_from(NAMES),
    st.sampled_from(sorted(NONFINITE)),
    st.sampled_from(OP_NAMES),
    st.sampled_from(WORDS + ATTR_STRINGS),
)
shapes = st.lists(st.one_of(st.integers(-2, 4), st.sampled_from(SHAPE_DIMS)), max_size=10)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(WORDS) | st.text(TEXT, max_size=4), inner)
    ),
    max_leaves=8,
)


def nested(depth: int, leaf: Any = 1.0) -> Any:
    """Return `leaf` inside `depth` lists."""
    for _ in range(depth):
        leaf = [leaf]
    return leaf


tensor_docs = st.dictionaries(
    st.sampled_from(sorted(TENSOR_KEYS)),
    st.one_of(scalars, shapes, st.lists(st.floats(-3, 3), max_size=4), st.text("AAAA=/+", max_size=12)),
    min_size=1,
    max_size=4,
)
op_docs = st.fixed_dictionaries(
    {
        "id": st.sampled_from(NAMES),
        "op": st.sampled_from(OP_NAMES),
        "inputs": st.lists(st.one_of(st.sampled_from(NAMES), scalars, shapes), max_size=4),
    },
    optional={"attrs": st.dictionaries(st.sampled_from(ATTR_NAMES), json_values, max_size=3)},
)
hostile = st.one_of(
    scalars,
    shapes,
    st.integers(1, 80).map(nested),
    json_values,
    tensor_docs,
    op_docs,
)
attr_values = st.one_of(
    st.integers(-3, 4),
    st.sampled_from(HUGE_NUMBERS),
    st.none(),
    st.booleans(),
    st.sampled_from(ATTR_STRINGS + ["float32", "int32", "bool", "float64"]),
    st.lists(st.integers(-3, 4), max_size=5),
    shapes,
    st.lists(st.lists(st.integers(-2, 3), max_size=3), max_size=4),
)


def locations(doc: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) in the document, breadth first."""
    out: list[tuple[Any, Any]] = []
    todo = [doc]
    while todo and len(out) < 400:
        node = todo.pop(0)
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in list(items):
            out.append((node, key))
            if isinstance(value, dict | list):
                todo.append(value)
    return out


def op_dicts(doc: Any) -> list[dict[str, Any]]:
    ops = doc.get("ops") if isinstance(doc, dict) else None
    return [op for op in ops if isinstance(op, dict)] if isinstance(ops, list) else []


def names_in(doc: Any) -> list[str]:
    """The names a document already uses, so that mutations reference things that exist."""
    found = {v for parent, key in locations(doc) for v in (key, parent[key]) if isinstance(v, str)}
    return sorted(n for n in found if re.fullmatch(r"[A-Za-z_]\w{0,63}", n)) or ["x"]


MUTATIONS = ("delete", "replace", "insert", "wrap", "reference", "duplicate", "op", "attr", "cycle", "expression")


def mutate(draw: Callable[[Any], Any], doc: Any) -> Any:
    """Apply one random mutation to `doc` (in place where it can) and return it."""
    kind = draw(st.sampled_from(MUTATIONS))
    locs = locations(doc)
    ops = op_dicts(doc)
    if kind == "op" and ops:
        draw(st.sampled_from(ops))["op"] = draw(st.sampled_from(OP_NAMES))
    elif kind == "attr" and ops:
        op = draw(st.sampled_from(ops))
        attrs = op.setdefault("attrs", {})
        if isinstance(attrs, dict):
            attrs[draw(st.sampled_from(ATTR_NAMES))] = draw(attr_values)
    elif kind == "cycle" and len(ops) > 1:
        op, other = draw(st.sampled_from(ops)), draw(st.sampled_from(ops))
        if isinstance(op.get("inputs"), list) and op["inputs"]:
            op["inputs"][draw(st.integers(0, len(op["inputs"]) - 1))] = other.get("id")
    elif kind == "expression" and isinstance(doc, dict) and isinstance(doc.get("expression"), str):
        text = doc["expression"]
        cut = draw(st.integers(0, len(text)))
        splice = draw(st.sampled_from([*OP_NAMES, *NAMES, "(", ")", ",", "=", "**", "@", "[", "]", "axis=", "1e9"]))
        doc["expression"] = text[:cut] + splice + text[cut + draw(st.integers(0, 3)) :]
    elif not locs or draw(st.integers(0, 30)) == 0:
        return draw(hostile)  # the whole document
    else:
        parent, key = draw(st.sampled_from(locs))
        if kind == "delete":
            del parent[key]
        elif kind == "insert" and isinstance(parent, dict):
            parent[draw(st.sampled_from(WORDS) | st.sampled_from(NAMES))] = draw(hostile)
        elif kind == "insert":
            parent.insert(key, draw(hostile))
        elif kind == "wrap":
            how = draw(st.sampled_from(["list", "value", "string", "negate", "deep"]))
            old = parent[key]
            if how == "list":
                parent[key] = [old]
            elif how == "value":
                parent[key] = {"value": old}
            elif how == "string":
                parent[key] = str(old)
            elif how == "negate" and isinstance(old, int | float) and not isinstance(old, bool):
                parent[key] = -old * 10 ** draw(st.integers(0, 40))
            else:
                parent[key] = nested(draw(st.integers(1, 70)), old)
        elif kind == "reference":
            parent[key] = draw(st.sampled_from(names_in(doc))) + draw(st.sampled_from(["", ":0", ":1", ":3"]))
        elif kind == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        else:
            parent[key] = draw(hostile)
    return doc


def over_the_wire(doc: Any) -> Any:
    """Return the document as the service would see it: written as JSON, read by orjson.

    orjson reads an integer past 64 bits as a float, and refuses one past a double (the API
    answers 400 then, see the edge cases below), so neither the validator nor the worker
    ever meets a Python int the JSON could not carry.
    """
    try:
        return orjson.loads(json.dumps(doc, allow_nan=False))
    except (ValueError, orjson.JSONDecodeError):  # a float overflowed to infinity on the way
        return copy.deepcopy(EXAMPLE_1)


@st.composite
def mutated_documents(draw: Callable[[Any], Any]) -> Any:
    doc = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        doc = mutate(draw, doc)
    return over_the_wire(doc)


def check_problem(exc: TapeserveError) -> None:
    """A domain error is a well-formed problem: JSON, a 4xx status, and pointers into the request."""
    problem = exc.problem()
    orjson.dumps(problem)
    assert problem["status"] in (413, 422), problem
    assert exc.errors, problem
    for error in exc.errors:
        assert error.path == "" or error.path.startswith("/"), error
        assert isinstance(error.message, str) and error.message, error
        assert len(error.message) < 2_000, error  # bounded reprs: no echo of a hostile document


def parse_or_problem(doc: Any, limits: Limits = SMALL) -> GradientRequest | None:
    try:
        return parse_request(doc, REGISTRY, limits)
    except TapeserveError as exc:
        check_problem(exc)
        return None


def test_every_seed_is_valid() -> None:
    for seed in SEEDS:
        assert parse_request(copy.deepcopy(seed), REGISTRY, SMALL) is not None, seed
    assert len(REGISTRY_SEEDS) > len(REGISTRY) // 2  # most ops' examples start a mutation


@FUZZ
@given(mutated_documents())
def test_mutated_documents_are_valid_or_a_tapeserve_error(doc: Any) -> None:
    parse_or_problem(doc)


@FUZZ
@given(hostile.map(over_the_wire))
def test_random_documents_are_valid_or_a_tapeserve_error(doc: Any) -> None:
    parse_or_problem(doc)


# --- the engine on whatever the validator lets through ----------------------------------------


@pytest.fixture(scope="module")
def tf() -> Any:
    return pytest.importorskip("tensorflow")


def static_shape(req: GradientRequest, ref: Ref) -> list[int]:
    return list(req.info(ref).shape)


def check_result(req: GradientRequest, result: dict[str, Any]) -> None:
    """The result has the shapes and dtypes the validator inferred and the contract promises."""
    targets = result["target"] if req.target_is_list else [result["target"]]
    for ref, doc in zip(req.targets, targets, strict=True):
        assert doc["shape"] == static_shape(req, ref), (ref, doc)
        assert doc["dtype"] == req.info(ref).dtype
    if req.encoding == "json":
        values = [v for part in result.values() if isinstance(part, dict | list) for v in numbers_in(part)]
        nonfinite = any(isinstance(v, str) and v in NONFINITE for v in values)
        noted = any("non-finite" in n for n in result.get("notes", []))
        assert nonfinite == noted, (values, result.get("notes"))
    target_shape = static_shape(req, req.targets[0])
    if req.mode == "jvp":
        if result["jvp"] is None:
            assert req.unconnected == "none"
        else:
            assert result["jvp"]["shape"] == target_shape and result["jvp"]["dtype"] == req.info(req.targets[0]).dtype
        return
    key = {"gradient": "gradients", "jacobian": "jacobians", "batch_jacobian": "jacobians", "hessian": "hessians"}
    entries = result[key[req.mode]]
    assert list(entries) == req.sources
    for name, entry in entries.items():
        src = list(req.tensors[name].shape)
        want = {
            "gradient": src,
            "jacobian": target_shape + src,
            "batch_jacobian": target_shape + src[1:],
            "hessian": src + src,
        }[req.mode]
        if entry is None:
            assert req.unconnected == "none"
            continue
        assert entry["shape"] == want and entry["dtype"] == req.tensors[name].dtype, (name, entry, want)


def numbers_in(value: Any) -> Iterator[Any]:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
        else:
            yield v


SMALL_SHAPES = [(), (1,), (2,), (3,), (2, 2), (2, 3), (3, 2), (1, 4, 4, 1), (2, 2, 1, 1), (2, 1, 3)]
small_tensors = st.builds(
    lambda shape, dtype, values, fill: (
        {"fill": values[0] if fill else 0.0, "shape": list(shape), "dtype": dtype}
        if fill
        else {"value": np.resize(np.array(values, dtype=object), shape).tolist(), "dtype": dtype}
    ),
    st.sampled_from(SMALL_SHAPES),
    st.sampled_from(["float32", "float64", "float16", "bfloat16"]),
    st.lists(st.one_of(st.floats(-3, 3, width=16), st.sampled_from([0.0, 1.0, -1.0, "NaN", "Infinity"])), min_size=1),
    st.booleans(),
)
int_tensors = st.builds(
    lambda shape, dtype, values: {"value": np.resize(np.array(values), shape).tolist(), "dtype": dtype},
    st.sampled_from(SMALL_SHAPES[:7]),
    st.sampled_from(["int32", "int64"]),
    st.lists(st.integers(-2, 4), min_size=1),
)
literals = st.one_of(
    st.integers(-3, 3),
    st.floats(-3, 3),
    st.sampled_from(sorted(NONFINITE)),
    st.lists(st.floats(-3, 3), min_size=1, max_size=3),
    st.lists(st.lists(st.integers(0, 3), min_size=2, max_size=2), min_size=2, max_size=2),
)
MILD = ("op", "attr", "unattr", "reference", "literal", "tensor", "mode", "order", "expression", "append", "hostile")


def mild_mutate(draw: Callable[[Any], Any], doc: dict[str, Any]) -> Any:
    """Change a document the way a confused client might, keeping it often valid."""
    kind = draw(st.sampled_from(MILD))
    ops = [op for op in op_dicts(doc) if isinstance(op.get("inputs"), list)]
    tensors: dict[str, Any] = doc["tensors"] if isinstance(doc.get("tensors"), dict) else {}
    names = sorted(tensors) + [op["id"] for op in ops if isinstance(op.get("id"), str)] or ["x"]
    if kind == "op" and ops:
        draw(st.sampled_from(ops))["op"] = draw(st.sampled_from(OP_NAMES))
    elif kind == "attr" and ops:
        op = draw(st.sampled_from(ops))
        spec = REGISTRY.resolve(op["op"]) if isinstance(op.get("op"), str) and op["op"] in REGISTRY else None
        choices = [a.name for a in spec.attrs] if spec and spec.attrs else ATTR_NAMES
        if not isinstance(op.get("attrs"), dict):
            op["attrs"] = {}
        op["attrs"][draw(st.sampled_from(choices))] = draw(attr_values)
    elif kind == "unattr" and ops:
        draw(st.sampled_from(ops)).pop("attrs", None)
    elif kind == "reference" and ops:
        op = draw(st.sampled_from(ops))
        ref = draw(st.sampled_from(names)) + draw(st.sampled_from(["", "", ":1"]))
        if op["inputs"] and draw(st.booleans()):
            op["inputs"][draw(st.integers(0, len(op["inputs"]) - 1))] = ref
        else:
            op["inputs"].append(ref)
    elif kind == "literal" and ops:
        op = draw(st.sampled_from(ops))
        if op["inputs"]:
            op["inputs"][draw(st.integers(0, len(op["inputs"]) - 1))] = draw(literals)
    elif kind == "tensor" and tensors:
        tensors[draw(st.sampled_from(sorted(tensors)))] = draw(st.one_of(small_tensors, int_tensors))
    elif kind == "mode":
        doc["mode"] = draw(st.sampled_from(MODES))
        doc.pop("order", None)
        sources: list[Any] = doc["sources"] if isinstance(doc.get("sources"), list) else []
        if doc["mode"] == "jvp":
            doc["tangents"] = {s: copy.deepcopy(tensors.get(s)) for s in sources if isinstance(s, str)}
    elif kind == "order":
        doc["order"] = draw(st.integers(1, 3))
    elif kind == "expression" and isinstance(doc.get("expression"), str):
        words = list(re.finditer(r"[A-Za-z_][\w.]*", doc["expression"]))
        if words:
            m = draw(st.sampled_from(words))
            new = draw(st.sampled_from([*OP_NAMES, *names]))
            doc["expression"] = doc["expression"][: m.start()] + new + doc["expression"][m.end() :]
    elif kind == "append" and isinstance(doc.get("ops"), list):
        inputs = draw(st.lists(st.sampled_from(names) | literals, min_size=1, max_size=3))
        doc["ops"].append({"id": f"n{len(doc['ops'])}", "op": draw(st.sampled_from(OP_NAMES)), "inputs": inputs})
        doc["target"] = f"n{len(doc['ops']) - 1}"
    else:
        return mutate(draw, doc)
    return doc


@st.composite
def engine_documents(draw: Callable[[Any], Any]) -> Any:
    """A mildly mutated document, retried a few times until the validator accepts one."""
    doc: Any = None
    for _ in range(6):
        doc = copy.deepcopy(draw(st.sampled_from(SEEDS) | st.sampled_from(REGISTRY_SEEDS)))
        for _ in range(draw(st.integers(1, 3))):
            doc = mild_mutate(draw, doc) if isinstance(doc, dict) else mutate(draw, doc)
        doc = over_the_wire(doc)
        try:
            parse_request(copy.deepcopy(doc), REGISTRY, SMALL)
            return doc
        except TapeserveError:
            continue
    return doc


def record(what: str) -> None:
    """Count an outcome in hypothesis's statistics (--hypothesis-show-statistics), when in a property."""
    if currently_in_test_context():
        event(what)


def run_checked(doc: Any, req: GradientRequest) -> dict[str, Any] | None:
    """Run an accepted document in the engine: a result of the right shapes, or a TapeserveError."""
    from worker.engine import run_document

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result: dict[str, Any] | None = run_document(doc, limits=SMALL)
        except TapeserveError as exc:
            record(f"engine refused: {type(exc).__name__}")
            check_problem(exc)
            result = None
    assert not caught, [str(w.message) for w in caught]  # a numpy or TF warning is a defect too
    if result is not None:
        record(f"ran: {req.mode}")
        check_result(req, result)
    return result


@FUZZ
@given(engine_documents())
def test_the_engine_runs_what_the_validator_accepts_or_raises_a_tapeserve_error(tf: Any, doc: Any) -> None:
    note(repr(doc))
    req = parse_or_problem(copy.deepcopy(doc))
    if req is not None:
        run_checked(doc, req)


# Second derivatives reach TF's gradients of gradients, which some ops lack: every registered op's
# example, as a Hessian and at order 2, runs or is refused with a TapeserveError (a sweep, not a
# sample: the fuzzers above found the first such op only now and then).
# (It found one: a Hessian through nn.softsign raised TF's StagingError, a 500, now a 422.)


def second_order_cases() -> list[Any]:
    cases = []
    for seed in REGISTRY_SEEDS:
        op = seed["ops"][0]["op"]
        for name, extra in (("hessian", {"mode": "hessian"}), ("order-2", {"order": 2})):
            cases.append(pytest.param({**seed, **extra}, id=f"{op}-{name}"))
    return cases


@pytest.mark.parametrize("doc", second_order_cases())
def test_every_op_at_second_order_runs_or_is_a_tapeserve_error(tf: Any, doc: dict[str, Any]) -> None:
    req = parse_or_problem(copy.deepcopy(doc))
    if req is not None:
        run_checked(doc, req)


# --- random expressions -------------------------------------------------------------------------

EXPRESSION_TENSORS = {"x": [[1.0, 2.0], [3.0, 4.0]], "w": [[0.5], [-1.5]], "z": 2.0}
TOKENS = [
    *("x", "w", "z", "q", "_e1", "x.T", "x[0]", "x:1"),
    *("tanh", "reduce_sum", "matmul", "math.log1p", "nn.relu", "einsum", "reshape", "tile", "broadcast_to"),
    *("transpose", "stack", "gather", "one_hot", "cast", "tf.add", "os.system", "__import__", "eval", "open"),
    *("+", "-", "*", "/", "**", "@", "//", "%", "<", "==", "~", "not", "and", "if", "else", "lambda", ":="),
    *("(", ")", "(", ")", "[", "]", ",", "=", ":", ".", "...", "*", "**", ";", "\n", "#", "'", '"'),
    *("0", "1", "2", "-1", "1.5", "1e9", "1e400", "10**10", "99999999999999999999", "0x10", "1j", "nan", "inf"),
    *("axis", "axis=", "axis=None", "keepdims=True", "shape=[2, 2]", "multiples=[100000, 100000]", "shape=[-1]"),
    *("equation='ij,jk->ik'", "dtype='int32'", "perm=[1, 0]", "None", "True", "'x'", "b'x'", "f'{x}'", "ｘ", "é"),
]
KEYWORDS = [
    *("axis=0", "axis=-1", "axis=None", "axis=[0, 1]", "keepdims=True", "shape=[4]", "shape=[2, 2]", "shape=[-1]"),
    *("multiples=[2, 1]", "perm=[1, 0]", "equation='ij,jk->ik'", "dtype='float64'", "depth=3", "transpose_b=True"),
    *("num_or_size_splits=2", "paddings=[[1, 0], [0, 1]]", "begin=[0, 0]", "size=[1, 2]", "alpha=0.5", "ord=2"),
]
well_formed = st.recursive(
    st.sampled_from(["x", "w", "z", "1.5", "-2", "[1.0, 2.0]", "[[1, 2], [3, 4]]"]),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "**", "@"]), inner).map(lambda t: f"({' '.join(t)})"),
        st.tuples(
            st.sampled_from(OP_NAMES), st.lists(inner, min_size=1, max_size=3), st.lists(st.sampled_from(KEYWORDS))
        ).map(lambda t: f"{t[0]}({', '.join(t[1] + t[2][:2])})"),
    ),
    max_leaves=6,
)
expression_text = st.one_of(
    well_formed,
    st.text(TEXT, max_size=60),
    st.lists(st.sampled_from(TOKENS), max_size=25).map(" ".join),
    st.lists(st.sampled_from(TOKENS), max_size=25).map("".join),
)


@FUZZ
@given(expression_text)
def test_random_expressions_are_valid_or_a_tapeserve_error(tf: Any, text: str) -> None:
    doc = {"tensors": copy.deepcopy(EXPRESSION_TENSORS), "expression": text, "sources": ["x", "w"]}
    note(repr(doc))
    req = parse_or_problem(copy.deepcopy(doc))
    if req is not None:
        run_checked(doc, req)


# --- random valid graphs against the same graph written by hand in TensorFlow -------------------


def hand_ops(tf: Any) -> dict[str, Callable[..., Any]]:
    """The TensorFlow function each op name stands for, as a TF user would write it."""
    return {
        "add": tf.add,
        "subtract": tf.subtract,
        "multiply": tf.multiply,
        "maximum": tf.maximum,
        "math.squared_difference": tf.math.squared_difference,
        "negative": tf.negative,
        "square": tf.square,
        "tanh": tf.tanh,
        "sigmoid": tf.sigmoid,
        "math.sin": tf.math.sin,
        "cos": tf.cos,
        "atan": tf.atan,
        "nn.softplus": tf.nn.softplus,
        "nn.relu": tf.nn.relu,
        "reduce_sum": tf.reduce_sum,
        "reduce_mean": tf.reduce_mean,
        "reduce_max": tf.reduce_max,
        "reduce_logsumexp": tf.reduce_logsumexp,
    }


BINARY = {"add": "+", "subtract": "-", "multiply": "*", "maximum": None, "math.squared_difference": None}
UNARY = ["negative", "square", "tanh", "sigmoid", "math.sin", "cos", "atan", "nn.softplus", "nn.relu"]
REDUCTIONS = ["reduce_sum", "reduce_mean", "reduce_max", "reduce_logsumexp"]
GRAPH_SHAPES = {"x": (2, 3), "y": (3,), "s": ()}


@st.composite
def valid_graphs(draw: Callable[[Any], Any]) -> dict[str, Any]:
    """A small random elementwise-and-reduction graph over x [2, 3], y [3] and a scalar s."""
    dtype = draw(st.sampled_from(["float32", "float64"]))
    values = st.floats(-2, 2, allow_subnormal=False, width=32)
    tensors = {
        n: {
            "value": np.resize(np.array(draw(st.lists(values, min_size=6, max_size=6))), shape).tolist(),
            "dtype": dtype,
        }
        for n, shape in GRAPH_SHAPES.items()
    }
    shapes: dict[str, tuple[int, ...]] = dict(GRAPH_SHAPES)
    ops: list[dict[str, Any]] = []
    for k in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["unary", "binary", "binary", "reduce"]))
        a = draw(st.sampled_from(sorted(shapes)))
        op_id = f"v{k}"
        if kind == "unary":
            op = {"id": op_id, "op": draw(st.sampled_from(UNARY)), "inputs": [a]}
            shape = shapes[a]
        elif kind == "binary":
            b: Any = draw(st.sampled_from(sorted(shapes)) | st.sampled_from([0.5, -1.5, 2]))
            try:
                shape = tuple(np.broadcast_shapes(shapes[a], shapes[b] if isinstance(b, str) else ()))
            except ValueError:
                continue
            inputs = [a, b] if draw(st.booleans()) else [b, a]
            op = {"id": op_id, "op": draw(st.sampled_from(sorted(BINARY))), "inputs": inputs}
        else:
            rank = len(shapes[a])
            axis = draw(st.one_of(st.none(), st.integers(-rank, rank - 1))) if rank else None
            keep = draw(st.booleans())
            op = {"id": op_id, "op": draw(st.sampled_from(REDUCTIONS)), "inputs": [a]}
            op["attrs"] = {"axis": axis, "keepdims": keep}
            full = range(rank) if axis is None else [axis % rank]
            shape = tuple(1 if i in full else d for i, d in enumerate(shapes[a]) if keep or i not in full)
        ops.append(op)
        shapes[op_id] = shape
    assume(ops)
    sources = draw(st.lists(st.sampled_from(sorted(GRAPH_SHAPES)), min_size=1, max_size=3, unique=True))
    return {"tensors": tensors, "ops": ops, "target": ops[-1]["id"], "sources": sources}


def as_expression(doc: dict[str, Any]) -> dict[str, Any]:
    """The same graph written as one expression (shared subgraphs written out again)."""
    texts: dict[str, str] = {n: n for n in doc["tensors"]}
    for op in doc["ops"]:
        args = [texts[i] if isinstance(i, str) else repr(i) for i in op["inputs"]]
        symbol = BINARY.get(op["op"])
        if symbol:
            texts[op["id"]] = f"({args[0]} {symbol} {args[1]})"
        else:
            attrs = [f"{k}={v!r}" for k, v in op.get("attrs", {}).items()]
            texts[op["id"]] = f"{op['op']}({', '.join(args + attrs)})"
    rest = {k: v for k, v in doc.items() if k not in ("ops", "target")}
    return {**rest, "expression": texts[doc["target"]]}


def by_hand(tf: Any, doc: dict[str, Any]) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Run the graph as hand-written TensorFlow: a tape, the ops in order, tape.gradient."""
    fns = hand_ops(tf)
    env = {n: tf.constant(t["value"], dtype=t["dtype"]) for n, t in doc["tensors"].items()}
    dtype = next(iter(doc["tensors"].values()))["dtype"]
    sources = [env[s] for s in doc["sources"]]
    with tf.GradientTape() as tape:
        tape.watch(sources)
        for op in doc["ops"]:
            args = [env[i] if isinstance(i, str) else tf.constant(i, dtype=dtype) for i in op["inputs"]]
            env[op["id"]] = fns[op["op"]](*args, **op.get("attrs", {}))
        target = env[doc["target"]]
    grads = tape.gradient(target, sources)
    return target.numpy(), [None if g is None else g.numpy() for g in grads]


@settings(max_examples=40, deadline=None, database=None)
@given(valid_graphs())
def test_random_valid_graphs_match_hand_written_tensorflow(tf: Any, doc: dict[str, Any]) -> None:
    from worker.engine import run_document

    note(json.dumps(doc))
    want_target, want_grads = by_hand(tf, doc)
    dtype = doc["tensors"]["x"]["dtype"]
    rtol, atol = (1e-5, 1e-6) if dtype == "float32" else (1e-12, 1e-12)
    for form in (doc, as_expression(doc)):
        out = run_document(form)
        assert out["target"]["shape"] == list(want_target.shape)
        assert out["target"]["dtype"] == dtype
        np.testing.assert_allclose(np.asarray(out["target"]["value"], dtype=np.float64), want_target, rtol, atol)
        for name, want in zip(doc["sources"], want_grads, strict=True):
            got = out["gradients"][name]
            if want is None:
                assert got is None
                continue
            assert got["shape"] == list(GRAPH_SHAPES[name]) and got["dtype"] == dtype
            np.testing.assert_allclose(np.asarray(got["value"], dtype=np.float64), want, rtol, atol)


# --- edge cases through the API, each with its status ---------------------------------------------


def post_raw(
    client: Any, body: bytes, content_type: str | None = "application/json", path: str = "/v1/gradients"
) -> Any:
    headers = {"Content-Type": content_type} if content_type else {}
    return client.post(path, data=body, headers=headers)


def problem_of(response: Any, status: int) -> dict[str, Any]:
    """Assert an RFC 9457 answer with this status and no trace; return its body."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, text
    assert response.mimetype == PROBLEM
    assert "Traceback" not in text and 'File "' not in text
    body: dict[str, Any] = orjson.loads(text)
    assert body["status"] == status and body["title"] and body["type"].startswith("/problems/")
    return body


def jobs(redis: Any) -> set[bytes]:
    return set(redis.keys("rq:job:*"))


def nothing_queued(redis: Any) -> bool:
    return not jobs(redis)


EX1 = b'"expression": "x * x", "sources": ["x"]'


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"tensors": {"x": NaN}, ' + EX1 + b"}", "not valid JSON"),
        (b'{"tensors": {"x": Infinity}, ' + EX1 + b"}", "not valid JSON"),
        (b'{"tensors": {"x": -Infinity}, ' + EX1 + b"}", "not valid JSON"),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"a": ' * 100_000, "nested too deeply"),
        (b'{"tensors": {"x": 1e400}, ' + EX1 + b"}", "out of the range of a double"),
        (b'{"tensors": {"x": -1e400}, ' + EX1 + b"}", "out of the range of a double"),
        (b'{"tensors": {"x": ' + b"7" * 4_000 + b"}, " + EX1 + b"}", "out of the range of a double"),
        (b'{"tensors": {"x": 3.0}, "expression": "x * \xff", "sources": ["x"]}', "not valid JSON"),
        (b'{"tensors": {"x": 3.0}, "expression": "x * \xc0\xaf", "sources": ["x"]}', "not valid JSON"),
        (b'{"tensors": {"x": 3.0}, "expression": "x * \\ud800", "sources": ["x"]}', "not valid JSON"),
        (b'\xef\xbb\xbf{"tensors": {"x": 3.0}, ' + EX1 + b"}", "not valid JSON"),
        (b"", "empty"),
        (b" \n\t ", "empty"),
        (b'{"tensors": {"x": 3.0}, ' + EX1, "not valid JSON"),
    ],
    ids=[
        "bare-nan",
        "bare-infinity",
        "bare-minus-infinity",
        "100000-deep-lists",
        "100000-deep-objects",
        "1e400",
        "minus-1e400",
        "4000-digit-integer",
        "invalid-utf8",
        "overlong-utf8",
        "lone-surrogate-escape",
        "byte-order-mark",
        "empty-body",
        "blank-body",
        "truncated",
    ],
)
def test_bodies_that_are_not_json_are_400(client: Any, redis: Any, body: bytes, says: str) -> None:
    problem = problem_of(post_raw(client, body), 400)
    assert says in problem["detail"]
    assert len(problem["detail"]) < 300  # no echo of the body
    assert nothing_queued(redis)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", None])
def test_a_body_that_is_not_declared_json_is_415(client: Any, content_type: str | None) -> None:
    body = orjson.dumps(EXAMPLE_1)
    problem = problem_of(post_raw(client, body, content_type), 415)
    assert "application/json" in problem["detail"]


def test_json_nested_65_deep_inside_a_valid_document_is_422_with_the_limit_and_pointer(client: Any) -> None:
    # The root is level 1, `tensors` 2, the value of x 3: 63 lists in x reach level 65.
    doc = {**EXAMPLE_1, "tensors": {"x": nested(63, 3.0)}}
    problem = problem_of(client.post("/v1/gradients", json=doc), 422)
    [error] = problem["errors"]
    assert error["path"] == "/tensors/x" + "/0" * 62
    assert "max_json_depth = 64" in error["message"]


def test_duplicate_keys_keep_the_last_value(client: Any, worker: Any) -> None:
    """orjson, like Python's json, keeps the last of duplicate keys: deliberate, and asserted here."""
    worker.register()
    body = (
        b'{"tensors": {"x": 1.0, "x": 3.0}, "expression": "x + x", "expression": "x * x",'
        b' "sources": ["z"], "sources": ["x"]}'
    )
    posted = post_raw(client, body)
    assert posted.status_code == 202, posted.get_data(as_text=True)
    worker.work()
    job = client.get(posted.headers["Location"]).get_json()
    assert job["status"] == "finished", job
    assert job["result"]["target"]["value"] == 9.0
    assert job["result"]["gradients"] == {"x": {"value": 6.0, "dtype": "float32", "shape": []}}


# --- every limit: at the limit accepted, one over refused, naming the limit, value and pointer -----

COST_2 = parse_request(EXAMPLE_2).cost or pytest.fail("a checked request has a cost")
SIX_FLOATS = base64.b64encode(np.ones(6, dtype="<f4").tobytes()).decode()
X23 = {"fill": 1.0, "shape": [2, 3]}


def limit_case(
    limit: str,
    measure: int,
    doc: Any,
    path: str,
    status: int = 422,
    endpoint: str = "/v1/gradients",
    id: str | None = None,
) -> Any:
    """A document whose `limit` measures exactly `measure`: accepted at that limit, refused one below."""
    return pytest.param(limit, measure, doc, path, status, endpoint, id=id or limit)


LIMIT_CASES = [
    limit_case("max_json_depth", 4, EXAMPLE_2, "/tensors/x/shape"),
    limit_case("max_ops", 4, EXAMPLE_2_GRAPH, "/ops", id="max_ops-graph"),
    limit_case("max_ops", 4, EXAMPLE_2, "/expression", id="max_ops-expression"),
    limit_case("max_tensors", 2, EXAMPLE_2, "/tensors"),
    limit_case("max_sources", 2, EXAMPLE_2, "/sources"),
    limit_case("max_tensor_elements", 6, EXAMPLE_2, "/tensors/x", 413, id="max_tensor_elements-fill"),
    limit_case("max_tensor_elements", 6, EXAMPLE_2_GRAPH, "/tensors/x", 413, id="max_tensor_elements-value"),
    limit_case(
        "max_tensor_elements",
        6,
        {"tensors": {"x": {"b64": SIX_FLOATS, "shape": [2, 3]}}, "expression": "reduce_sum(x * x)", "sources": ["x"]},
        "/tensors/x",
        413,
        id="max_tensor_elements-b64",
    ),
    limit_case(
        "max_tensor_elements",
        6,
        {
            "tensors": {"x": 3.0},
            "ops": [{"id": "y", "op": "multiply", "inputs": ["x", [1.0] * 6]}],
            "target": "y",
            "sources": ["x"],
        },
        "/ops/0/inputs/1",
        413,
        id="max_tensor_elements-inline-literal",
    ),
    limit_case("max_rank", 2, EXAMPLE_2, "/tensors/x/shape", id="max_rank-shape"),
    limit_case("max_rank", 2, EXAMPLE_2_GRAPH, "/tensors/x/value", id="max_rank-value"),
    limit_case(
        "max_rank",
        3,
        {"tensors": {"x": [[1.0]]}, "expression": "reduce_sum(expand_dims(x, axis=0))", "sources": ["x"]},
        "/expression",
        id="max_rank-intermediate",
    ),
    limit_case("max_expression_length", 5, EXAMPLE_1, "/expression"),
    limit_case("max_expression_depth", 3, {**EXAMPLE_1, "expression": "tanh(tanh(x))"}, "/expression"),
    limit_case("max_order", 2, {**EXAMPLE_1, "order": 2}, "/order"),
    limit_case(
        "max_intermediate_elements",
        6,
        {"tensors": {"x": 1.0}, "expression": "reduce_sum(broadcast_to(x, shape=[2, 3]))", "sources": ["x"]},
        "/expression",
        id="max_intermediate_elements-broadcast_to",
    ),
    limit_case(
        "max_intermediate_elements",
        6,
        {
            "tensors": {"x": [1.0, 2.0]},
            "ops": [
                {"id": "t", "op": "tile", "inputs": ["x"], "attrs": {"multiples": [3]}},
                {"id": "y", "op": "reduce_sum", "inputs": ["t"]},
            ],
            "target": "y",
            "sources": ["x"],
        },
        "/ops/0",
        id="max_intermediate_elements-tile",
    ),
    limit_case(
        "max_result_elements",
        36,
        {"tensors": {"x": X23}, "expression": "x * x", "sources": ["x"], "mode": "jacobian"},
        "/sources/0",
        id="max_result_elements-jacobian",
    ),
    limit_case(
        "max_result_elements",
        18,
        {"tensors": {"x": X23}, "expression": "x * x", "sources": ["x"], "mode": "batch_jacobian"},
        "/sources/0",
        id="max_result_elements-batch_jacobian",
    ),
    limit_case(
        "max_result_elements",
        9,
        {"tensors": {"x": [1.0, 2.0, 3.0]}, "expression": "reduce_sum(x * x)", "sources": ["x"], "mode": "hessian"},
        "/sources/0",
        id="max_result_elements-hessian",
    ),
    # x*x (6) + 2*z (1) + their sum (6) + reduce_sum (1)
    limit_case("max_total_elements", 14, EXAMPLE_2_GRAPH, "/ops", id="max_total_elements-graph"),
    limit_case("max_total_elements", 14, EXAMPLE_2, "/expression", id="max_total_elements-expression"),
    limit_case("max_batch_graphs", 2, {"graphs": [EXAMPLE_1, EXAMPLE_3]}, "/graphs", endpoint="/v1/batches"),
    # x * x (1 op) and x**2 + 2*x - 1 (4 ops), counted as their expressions parse
    limit_case("max_batch_ops", 5, {"graphs": [EXAMPLE_1, EXAMPLE_3]}, "/graphs", endpoint="/v1/batches"),
    limit_case("max_dimension", 3, EXAMPLE_2, "/tensors/x", 413, id="max_dimension-input"),
    limit_case(
        "max_dimension",
        3,
        {"tensors": {"x": 1.0}, "expression": "reduce_sum(broadcast_to(x, shape=[2, 3]))", "sources": ["x"]},
        "/expression",
        id="max_dimension-intermediate",
    ),
    # The cost model's estimates of EXAMPLE_2, whatever they are: these cases check the wiring
    # (the limit, its value and the pointer); tests/test_costmodel.py checks the estimates.
    limit_case("max_result_bytes", COST_2.result_bytes, EXAMPLE_2, "/sources/0"),
    limit_case("max_memory_bytes", COST_2.memory_bytes, EXAMPLE_2, "/expression"),
    limit_case("max_flops", COST_2.flops, EXAMPLE_2, "/expression"),
]


def test_every_limit_has_a_case() -> None:
    # max_body_bytes has its own test below; time_limit_s is tests/test_faults.py's.
    covered = {case.values[0] for case in LIMIT_CASES} | {"max_body_bytes", "time_limit_s"}
    assert covered == {f.name for f in dataclasses.fields(Limits)}


@pytest.fixture
def limited(redis_server: Any, redis: Any, worker: Any) -> Callable[..., Any]:
    """Make a test client of an app with some limits set, with a worker registered for its pool."""
    from service import create_app

    worker.register()

    def make(**limits: int) -> Any:
        config = {"TESTING": True, "REDIS_URL": redis_server.url, "DEFAULT_WAIT_S": 0, "WORKER_CHECK_S": 0}
        return create_app({**config, **{k.upper(): v for k, v in limits.items()}}).test_client()

    return make


@pytest.mark.parametrize(("limit", "measure", "doc", "path", "status", "endpoint"), LIMIT_CASES)
def test_every_limit_accepts_its_value_and_refuses_one_more(
    limited: Callable[..., Any], redis: Any, limit: str, measure: int, doc: Any, path: str, status: int, endpoint: str
) -> None:
    accepted = limited(**{limit: measure}).post(endpoint, json=doc)
    assert accepted.status_code == 202, accepted.get_data(as_text=True)
    queued = jobs(redis)
    problem = problem_of(limited(**{limit: measure - 1}).post(endpoint, json=doc), status)
    messages = [e["message"] for e in problem["errors"] if e["path"] == path]
    assert messages, (path, problem["errors"])
    assert any(limit in m and str(measure - 1) in m for m in messages), messages
    assert "limit" in problem["type"], problem["type"]
    assert jobs(redis) == queued


def test_the_body_limit_accepts_its_value_and_refuses_one_more_byte(limited: Callable[..., Any], redis: Any) -> None:
    body = orjson.dumps(EXAMPLE_1)
    client = limited(max_body_bytes=len(body) + 10)
    assert post_raw(client, body + b" " * 10).status_code == 202  # exactly the limit, in whitespace
    queued = jobs(redis)
    problem = problem_of(post_raw(client, body + b" " * 11), 413)
    assert f"max_body_bytes = {len(body) + 10}" in problem["detail"]
    assert jobs(redis) == queued


# --- what the fuzzers found, each a minimal reproduction, kept as regression tests -----------------


def run_strictly(doc: Any) -> dict[str, Any]:
    """Run a document in the engine with every warning an error."""
    from worker.engine import run_document

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result: dict[str, Any] = run_document(doc)
    return result


def test_an_expression_that_is_an_unknown_name_is_a_graph_error() -> None:
    # It was accepted with no target at all, and the engine failed with an IndexError.
    with pytest.raises(TapeserveError) as caught:
        parse_request({"tensors": {"x": 3.0}, "expression": "q", "sources": ["x"]})
    assert caught.value.errors[0].path == "/expression" and "'q'" in caught.value.errors[0].message


def test_a_non_finite_inline_literal_runs_as_tensorflow_would(tf: Any) -> None:
    # The string "Infinity" reached tf.constant (TypeError).
    doc = {
        "tensors": {"x": [1.0, 2.0]},
        "ops": [{"id": "y", "op": "multiply", "inputs": ["x", "Infinity"]}],
        "target": "y",
        "sources": ["x"],
    }
    result = run_strictly(doc)
    assert result["target"]["value"] == ["Infinity", "Infinity"]
    assert result["gradients"]["x"]["value"] == ["Infinity", "Infinity"]


@pytest.mark.parametrize("index", [0.5, 2**40, [1.0], "NaN"], ids=["half", "2**40", "float-list", "nan"])
def test_an_index_literal_that_is_not_an_int32_is_a_graph_error(index: Any) -> None:
    # 0.5 reached tf.constant (TypeError); 2**40 wrapped silently to 0 and gathered element 0.
    doc = {"tensors": {"a": [1.0, 2.0]}, "ops": [{"id": "g", "op": "gather", "inputs": ["a", index]}]}
    with pytest.raises(TapeserveError) as caught:
        parse_request({**doc, "target": "g", "sources": ["a"]})
    assert caught.value.errors[0].path == "/ops/0/inputs/1"


def test_a_scalar_bfloat16_graph_runs(tf: Any) -> None:
    # np.asarray of a rank-0 bfloat16 tensor raised ValueError in encode_result.
    result = run_strictly(
        {"tensors": {"x": {"value": 2.0, "dtype": "bfloat16"}}, "expression": "x * x", "sources": ["x"]}
    )
    assert result["target"] == {"value": 4.0, "dtype": "bfloat16", "shape": []}
    assert result["gradients"]["x"] == {"value": 4.0, "dtype": "bfloat16", "shape": []}


def test_an_unconnected_jvp_is_null_like_an_unconnected_gradient(tf: Any) -> None:
    # It was written as {"value": null, "dtype": "float32", "shape": []} for a [2] target.
    doc = {"tensors": {"x": 1.0, "c": [1.0, 2.0]}, "expression": "c * c", "sources": ["x"], "mode": "jvp"}
    result = run_strictly({**doc, "tangents": {"x": 1.0}})
    assert result["jvp"] is None
    assert any("connected" in n for n in result["notes"])
    zeros = run_strictly({**doc, "tangents": {"x": 1.0}, "unconnected_gradients": "zero"})
    assert zeros["jvp"] == {"value": [0.0, 0.0], "dtype": "float32", "shape": [2]}


def test_a_large_finite_float64_is_not_noted_as_non_finite(tf: Any) -> None:
    # The codec counted non-finite values in float32: 2e300 warned and was noted as non-finite.
    doc = {"tensors": {"x": {"value": [1e300, 1.0], "dtype": "float64"}}, "expression": "x * 2", "sources": ["x"]}
    result = run_strictly(doc)
    assert result["target"]["value"] == [2e300, 2.0]
    assert "notes" not in result


@pytest.mark.parametrize(
    "x",
    [
        {"value": [1e39, 1e39], "dtype": "float32"},
        {"fill": 1e39, "shape": [2], "dtype": "float32"},
    ],
    ids=["value", "fill"],
)
def test_a_number_past_float32s_range_is_infinity_as_in_tensorflow(tf: Any, x: dict[str, Any]) -> None:
    # It was infinity already, with a numpy RuntimeWarning on the way (an error under pytest).
    result = run_strictly({"tensors": {"x": x}, "expression": "x * 2", "sources": ["x"]})
    assert result["target"]["value"] == ["Infinity", "Infinity"]
    assert float(tf.constant(1e39, tf.float32)) == float("inf")


def test_a_hessian_through_an_svd_runs_on_its_second_sighting(tf: Any) -> None:
    # The first, eager run works; the second is traced with tf.function, where TF's SVD gradient
    # meets an unknown inner shape and raises NotImplementedError. It was a 500 through the API;
    # now the structure falls back to running eagerly.
    m = np.arange(18, dtype=float).reshape(2, 3, 3)
    m[0, 0, 0] = 5.0
    doc = {
        "tensors": {"m": {"value": m.tolist(), "dtype": "float64"}},
        "expression": "reduce_sum(norm(m, ord=2, axis=[-2, -1]))",
        "sources": ["m"],
        "mode": "hessian",
    }
    first, second = run_strictly(doc)["hessians"]["m"], run_strictly(doc)["hessians"]["m"]
    assert first["shape"] == second["shape"] == [2, 3, 3, 2, 3, 3]
    np.testing.assert_allclose(second["value"], first["value"], rtol=1e-9, atol=1e-12)


# --- a 10^10-element request costs nothing: refused by the validator, which never imports TF -------

TEN_BILLION = """
import sys, tracemalloc
from tapecore.errors import LimitExceeded, TensorTooLarge
from tapecore.request import parse_request

huge = {"fill": 1.0, "shape": [100000, 100000]}
long = {"fill": 1.0, "shape": [100000]}
cases = [
    ({"tensors": {"x": huge}, "expression": "reduce_sum(x)", "sources": ["x"]}, TensorTooLarge, "/tensors/x"),
    (
        {"tensors": {"x": 1.0}, "expression": "reduce_sum(broadcast_to(x, shape=[100000, 100000]))", "sources": ["x"]},
        LimitExceeded,
        "/expression",
    ),
    (
        {
            "tensors": {"x": long},
            "ops": [{"id": "t", "op": "tile", "inputs": ["x"], "attrs": {"multiples": [100000]}}],
            "target": "t",
            "sources": ["x"],
        },
        LimitExceeded,
        "/ops/0",
    ),
    (
        {"tensors": {"x": {"fill": 1.0, "shape": [4096, 4096]}}, "expression": "x", "sources": ["x"],
         "mode": "hessian"},
        LimitExceeded,
        "/sources/0",
    ),
]
tracemalloc.start()
for doc, kind, path in cases:
    try:
        parse_request(doc)
    except kind as exc:
        assert exc.errors[0].path == path, exc.errors
    else:
        raise SystemExit(f"accepted: {doc}")
peak = tracemalloc.get_traced_memory()[1]
assert peak < 1 << 20, f"{peak} bytes allocated"
assert "tensorflow" not in sys.modules, "the validator imported TensorFlow"
"""


def test_a_ten_billion_element_request_is_refused_without_tensorflow_or_memory() -> None:
    subprocess.run([sys.executable, "-c", TEN_BILLION], cwd=ROOT, check=True, timeout=60)


def test_a_ten_billion_element_request_is_413_and_queues_nothing(client: Any, worker: Any, redis: Any) -> None:
    worker.register()
    doc = {"tensors": {"x": {"fill": 1.0, "shape": [100000, 100000]}}, "expression": "reduce_sum(x)", "sources": ["x"]}
    problem = problem_of(client.post("/v1/gradients", json=doc), 413)
    assert problem["errors"][0]["path"] == "/tensors/x"
    assert "10000000000 elements" in problem["errors"][0]["message"]
    assert nothing_queued(redis)


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize("job_id", ["a.b", "%20", "caf%C3%A9", "x%09y"])
def test_a_job_id_rq_would_refuse_is_404(client: Any, method: str, job_id: str) -> None:
    # rq's Job.fetch raised ValueError for such an id: a 500 (found by schemathesis).
    problem_of(client.open(f"/v1/jobs/{job_id}", method=method), 404)


@pytest.mark.parametrize("path", ["/v1/gradients", "/v1/batches"])
@pytest.mark.parametrize(
    "body",
    [
        b"0",
        b"null",
        b"false",
        b'""',
        b'"x"',
        b"[]",
        b"[1, 2]",
        b"1",  # these three were a 500: check_depth indexed them like a list (found by schemathesis)
        b"-1.5",
        b"true",
    ],
)
def test_a_body_that_is_json_but_not_an_object_is_422(client: Any, path: str, body: bytes) -> None:
    problem = problem_of(post_raw(client, body, path=path), 422)
    assert problem["errors"][0]["path"] == ""
