"""The benchmark's workloads: each request document beside the hand-written TensorFlow it means.

A workload makes its i-th case on demand (new names, new values or a new structure, as the
workload says), so that every mode runs the very same documents. The hand-written code takes
the document's tensors as arrays, in document order, and returns the target and the gradients
in source order: what a TensorFlow user would write, with no service in between.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

Answer = tuple[np.ndarray, list[np.ndarray]]  # the target, then one gradient per source
HandFn = Callable[[list[np.ndarray]], Answer]

EXAMPLE_1: dict[str, Any] = {"tensors": {"x": 3.0}, "expression": "x * x", "sources": ["x"]}
EXAMPLE_2: dict[str, Any] = {
    "tensors": {"x": {"fill": 3.0, "shape": [2, 3]}, "z": 5.0},
    "expression": "reduce_sum(x * x + 2 * z)",
    "sources": ["x", "z"],
}
EXAMPLE_3: dict[str, Any] = {"tensors": {"x": 2.0}, "expression": "x**2 + 2*x - 1", "sources": ["x"]}

MLP_SHAPES = {"x": (64, 128), "w1": (128, 256), "b1": (256,), "w2": (256, 10), "b2": (10,), "y": (64, 10)}
MLP_EXPRESSION = "reduce_mean(square(tanh(x @ w1 + b1) @ w2 + b2 - y))"
CHAIN_LENGTH = 200  # elementwise ops, before the reduce_sum that makes the target a scalar
CHAIN_SIZE = 1_000  # elements of the chain's vector
CHAIN_KINDS = ("sin", "multiply", "add", "tanh")
SEEN_CHAIN_SEED = 1_000_000  # the one structure that "seen before" repeats, apart from first-sight seeds
LARGE_SHAPE = (1_000, 1_000)  # 4 MB of float32 each way
VALUE_VARIANTS = 4  # distinct value sets cycled through, so the documents need not all be kept
BATCH_GRAPHS = 1_000


def _numpy(target: Any, grads: list[Any]) -> Answer:
    return np.asarray(target), [np.asarray(g) for g in grads]


def example_1(arrays: list[np.ndarray]) -> Answer:
    """x * x by x."""
    x = tf.constant(arrays[0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = x * x
    return _numpy(y, tape.gradient(y, [x]))


def example_2(arrays: list[np.ndarray]) -> Answer:
    """reduce_sum(x * x + 2 * z) by x and z."""
    x, z = (tf.constant(a) for a in arrays)
    with tf.GradientTape() as tape:
        tape.watch([x, z])
        y = tf.reduce_sum(x * x + 2 * z)
    return _numpy(y, tape.gradient(y, [x, z]))


def example_3(arrays: list[np.ndarray]) -> Answer:
    """x**2 + 2*x - 1 by x."""
    x = tf.constant(arrays[0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = x**2 + 2 * x - 1
    return _numpy(y, tape.gradient(y, [x]))


def mlp(arrays: list[np.ndarray]) -> Answer:
    """The MLP's mean squared error by both weight matrices."""
    x, w1, b1, w2, b2, y = (tf.constant(a) for a in arrays)
    with tf.GradientTape() as tape:
        tape.watch([w1, w2])
        loss = tf.reduce_mean(tf.square(tf.tanh(x @ w1 + b1) @ w2 + b2 - y))
    return _numpy(loss, tape.gradient(loss, [w1, w2]))


def square_sum(arrays: list[np.ndarray]) -> Answer:
    """reduce_sum(x * x) by x: the large tensor's round trip (its gradient is as large)."""
    x = tf.constant(arrays[0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(x * x)
    return _numpy(y, tape.gradient(y, [x]))


Step = tuple[str, float | None]  # an elementwise op and its literal operand, if any


def chain(steps: list[Step]) -> HandFn:
    """Return the hand-written chain: each step applied in turn, then reduce_sum, by x."""

    def run(arrays: list[np.ndarray]) -> Answer:
        x = tf.constant(arrays[0])
        with tf.GradientTape() as tape:
            tape.watch(x)
            h = x
            for kind, c in steps:
                if kind == "sin":
                    h = tf.sin(h)
                elif kind == "multiply":
                    h = h * c
                elif kind == "add":
                    h = h + c
                else:
                    h = tf.tanh(h)
            y = tf.reduce_sum(h)
        return _numpy(y, tape.gradient(y, [x]))

    return run


def chain_steps(doc: dict[str, Any]) -> list[Step]:
    """Read a chain document's steps back from its ops (the reduce_sum at the end left out)."""
    return [(op["op"], op["inputs"][1] if len(op["inputs"]) > 1 else None) for op in doc["ops"][:-1]]


def make_steps(seed: int) -> list[Step]:
    """Seeded steps; the seen-before chain alternates sin, multiply, add, tanh in turn."""
    rng = np.random.default_rng(seed)
    steps: list[Step] = []
    for k in range(CHAIN_LENGTH):
        kind = CHAIN_KINDS[k % 4] if seed == SEEN_CHAIN_SEED else str(rng.choice(CHAIN_KINDS))
        literal = {"multiply": round(float(rng.uniform(0.8, 1.2)), 3), "add": round(float(rng.uniform(-0.3, 0.3)), 3)}
        steps.append((kind, literal.get(kind)))
    return steps


def chain_document(steps: list[Step], x: np.ndarray) -> dict[str, Any]:
    """Write a chain as an explicit graph (the ops form), target the sum of its last op."""
    ops: list[dict[str, Any]] = []
    previous = "x"
    for k, (kind, c) in enumerate(steps, start=1):
        inputs: list[Any] = [previous] if c is None else [previous, c]
        ops.append({"id": f"h{k}", "op": kind, "inputs": inputs})
        previous = f"h{k}"
    ops.append({"id": "y", "op": "reduce_sum", "inputs": [previous]})
    return {"tensors": {"x": {"value": x.tolist(), "dtype": "float32"}}, "ops": ops, "target": "y", "sources": ["x"]}


def renamed(doc: dict[str, Any], suffix: str) -> dict[str, Any]:
    """Rename every tensor, so that the document is a graph the engine has never seen."""
    names = {name: f"{name}_{suffix}" for name in doc["tensors"]}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    out = dict(doc)
    out["tensors"] = {names[n]: t for n, t in doc["tensors"].items()}
    out["sources"] = [names[s] for s in doc["sources"]]
    out["expression"] = pattern.sub(lambda m: names[m.group(1)], doc["expression"])
    return out


@functools.cache
def _mlp_arrays(variant: int) -> list[np.ndarray]:
    rng = np.random.default_rng(variant)
    return [(rng.standard_normal(shape) * 0.1).astype(np.float32) for shape in MLP_SHAPES.values()]


@functools.cache
def _vector(variant: int) -> np.ndarray:
    return np.random.default_rng(variant).uniform(-1, 1, CHAIN_SIZE).astype(np.float32)


@functools.cache
def _large() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(LARGE_SHAPE).astype(np.float32)


def _mlp_case(i: int) -> dict[str, Any]:
    arrays = _mlp_arrays(i % VALUE_VARIANTS)
    tensors = {n: {"value": a.tolist(), "dtype": "float32"} for n, a in zip(MLP_SHAPES, arrays, strict=True)}
    return {"tensors": tensors, "expression": MLP_EXPRESSION, "sources": ["w1", "w2"]}


def _mlp_b64_case(i: int) -> dict[str, Any]:
    """The MLP with its tensors (and results) as raw little-endian bytes: no JSON numbers to read."""
    arrays = _mlp_arrays(i % VALUE_VARIANTS)
    tensors = {
        n: {
            "b64": base64.b64encode(a.astype("<f4").tobytes()).decode("ascii"),
            "dtype": "float32",
            "shape": list(a.shape),
        }
        for n, a in zip(MLP_SHAPES, arrays, strict=True)
    }
    return {"tensors": tensors, "expression": MLP_EXPRESSION, "sources": ["w1", "w2"], "encoding": "b64"}


@functools.cache
def _large_json() -> dict[str, Any]:
    return {
        "tensors": {"x": {"value": _large().tolist(), "dtype": "float32"}},
        "expression": "reduce_sum(x * x)",
        "sources": ["x"],
    }


@functools.cache
def _large_b64() -> dict[str, Any]:
    raw = base64.b64encode(_large().astype("<f4").tobytes()).decode("ascii")
    x = {"b64": raw, "dtype": "float32", "shape": list(LARGE_SHAPE)}
    return {"tensors": {"x": x}, "expression": "reduce_sum(x * x)", "sources": ["x"], "encoding": "b64"}


@dataclass(frozen=True)
class Workload:
    """A family of request documents and the hand-written TensorFlow that answers each."""

    name: str
    title: str
    make: Callable[[int], dict[str, Any]]  # the i-th document
    hand_for: Callable[[dict[str, Any]], HandFn]  # the hand-written code for a document
    peer: str | None = None  # another workload whose (d) stands in: b64 is past what a first service speaks
    kind: str = "small"  # sets the iteration counts: small, medium, chain or large


def _fixed(fn: HandFn) -> Callable[[dict[str, Any]], HandFn]:
    return lambda doc: fn


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("example1", "example 1, first sight", lambda i: renamed(EXAMPLE_1, f"s{i}"), _fixed(example_1)),
        Workload("example2", "example 2, first sight", lambda i: renamed(EXAMPLE_2, f"s{i}"), _fixed(example_2)),
        Workload("example3", "example 3, first sight", lambda i: renamed(EXAMPLE_3, f"s{i}"), _fixed(example_3)),
        Workload("example3_repeat", "example 3, same document", lambda i: EXAMPLE_3, _fixed(example_3)),
        Workload("mlp", "MLP 64x128->256->10", _mlp_case, _fixed(mlp), kind="medium"),
        Workload("mlp_b64", "MLP, b64 tensors", _mlp_b64_case, _fixed(mlp), peer="mlp", kind="medium"),
        Workload(
            "chain_first",
            "200-op chain, first sight",
            lambda i: chain_document(make_steps(i), _vector(i % VALUE_VARIANTS)),
            lambda doc: chain(chain_steps(doc)),
            kind="chain",
        ),
        Workload(
            "chain_seen",
            "200-op chain, seen before",
            lambda i: chain_document(make_steps(SEEN_CHAIN_SEED), _vector(i % VALUE_VARIANTS)),
            lambda doc: chain(chain_steps(doc)),
            kind="chain",
        ),
        Workload("large_json", "1000x1000 source, JSON", lambda i: _large_json(), _fixed(square_sum), kind="large"),
        Workload(
            "large_b64",
            "1000x1000 source, b64",
            lambda i: _large_b64(),
            _fixed(square_sum),
            peer="large_json",
            kind="large",
        ),
    )
}


def batch_graphs(n: int = BATCH_GRAPHS) -> list[tuple[str, dict[str, Any]]]:
    """Small graphs for the batch: the three examples in turn, each with its own values."""
    graphs: list[tuple[str, dict[str, Any]]] = []
    for i in range(n):
        value = 1.0 + (i % 17) * 0.25
        if i % 3 == 0:
            graphs.append(("example1", {**EXAMPLE_1, "tensors": {"x": value}}))
        elif i % 3 == 1:
            graphs.append(("example2", {**EXAMPLE_2, "tensors": {"x": {"fill": value, "shape": [2, 3]}, "z": 5.0}}))
        else:
            graphs.append(("example3", {**EXAMPLE_3, "tensors": {"x": value}}))
    return graphs


def decode_arrays(doc: dict[str, Any]) -> list[np.ndarray]:
    """Return a document's tensors as float32 arrays, in document order."""
    return [decode_tensor(t) for t in doc["tensors"].values()]


def decode_tensor(t: Any) -> np.ndarray:
    """Return one tensor document (shorthand, value, fill or b64) as an array."""
    if not isinstance(t, dict):
        return np.asarray(t, dtype=np.float32)
    dtype = np.dtype(t.get("dtype", "float32"))
    if "b64" in t:
        return np.frombuffer(base64.b64decode(t["b64"]), dtype=dtype.newbyteorder("<")).reshape(t["shape"])
    if "fill" in t:
        return np.full(t["shape"], t["fill"], dtype=dtype)
    return np.asarray(t["value"], dtype=dtype)


def answer_of(result: dict[str, Any], sources: list[str]) -> Answer:
    """Read the target and gradients (in source order) out of a result document."""
    return decode_tensor(result["target"]), [decode_tensor(result["gradients"][s]) for s in sources]


def disagreement(got: Answer, want: Answer, rtol: float = 1e-4, atol: float = 1e-5) -> str | None:
    """Say how two answers differ, or None when they agree to float32 rounding."""
    pairs = [("target", got[0], want[0])] + [
        (f"gradient {k}", g, w) for k, (g, w) in enumerate(zip(got[1], want[1], strict=True))
    ]
    for what, g, w in pairs:
        if g.shape != w.shape:
            return f"{what}: shape {list(g.shape)} != {list(w.shape)}"
        if not np.allclose(g, w, rtol=rtol, atol=atol * max(1.0, float(np.max(np.abs(w), initial=0.0)))):
            worst = float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64))))
            return f"{what}: differs by up to {worst:.3g}"
    return None
