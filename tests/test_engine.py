"""The engine against hand-written TensorFlow: the contract's examples and every mode."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from tapecore.errors import ExecutionError, GraphError
from tests.examples import EXAMPLE_1, EXAMPLE_2, EXAMPLE_2_GRAPH, EXAMPLE_3

tf = pytest.importorskip("tensorflow")
from worker.engine import run_document, run_json  # noqa: E402
from worker.engine.codec import dumps  # noqa: E402


def value(doc: dict[str, Any] | None) -> Any:
    assert doc is not None
    return np.asarray(doc["value"], dtype=np.float64)


def test_contract_example_1() -> None:
    out = run_document(EXAMPLE_1)
    assert out["target"] == {"value": 9.0, "dtype": "float32", "shape": []}
    assert out["gradients"]["x"] == {"value": 6.0, "dtype": "float32", "shape": []}


@pytest.mark.parametrize("doc", [EXAMPLE_2, EXAMPLE_2_GRAPH], ids=["expression", "graph"])
def test_contract_example_2(doc: dict[str, Any]) -> None:
    out = run_document(doc)
    assert out["target"] == {"value": 114.0, "dtype": "float32", "shape": []}
    assert out["gradients"]["x"] == {"value": [[6.0] * 3] * 2, "dtype": "float32", "shape": [2, 3]}
    assert out["gradients"]["z"] == {"value": 12.0, "dtype": "float32", "shape": []}


def test_contract_example_3_in_both_forms() -> None:
    graph = {
        "tensors": {"x": 2.0},
        "ops": [
            {"id": "sq", "op": "pow", "inputs": ["x", 2]},
            {"id": "tx", "op": "multiply", "inputs": [2, "x"]},
            {"id": "s", "op": "add", "inputs": ["sq", "tx"]},
            {"id": "y", "op": "subtract", "inputs": ["s", 1]},
        ],
        "target": "y",
        "sources": ["x"],
    }
    for doc in (EXAMPLE_3, graph):
        out = run_document(doc)
        assert out["target"]["value"] == 7.0
        assert out["gradients"]["x"]["value"] == 6.0


def test_second_derivative_of_x_squared_by_nested_tapes() -> None:
    # TensorFlow's autodiff guide: d2/dx2 of x**2 is 2.
    x = tf.constant(3.0)
    with tf.GradientTape() as t2:
        t2.watch(x)
        with tf.GradientTape() as t1:
            t1.watch(x)
            y = x * x
        dy = t1.gradient(y, x)
    d2y = t2.gradient(dy, x)
    out = run_document({**EXAMPLE_1, "order": 2})
    assert out["gradients"]["x"]["value"] == float(d2y) == 2.0


def test_third_order_is_zero_not_null_for_a_connected_source() -> None:
    out = run_document({**EXAMPLE_1, "order": 3})
    assert out["gradients"]["x"]["value"] == 0.0


def test_several_sources_and_targets_sum_like_tensorflow() -> None:
    doc = {
        "tensors": {"a": [1.0, 2.0], "b": [3.0, -1.0]},
        "ops": [
            {"id": "p", "op": "multiply", "inputs": ["a", "b"]},
            {"id": "q", "op": "exp", "inputs": ["a"]},
        ],
        "target": ["p", "q"],
        "sources": ["a", "b"],
    }
    a, b = tf.constant([1.0, 2.0]), tf.constant([3.0, -1.0])
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        p, q = a * b, tf.exp(a)
    ga, gb = tape.gradient([p, q], [a, b])
    out = run_document(doc)
    assert isinstance(out["target"], list) and len(out["target"]) == 2
    np.testing.assert_allclose(value(out["gradients"]["a"]), ga.numpy(), rtol=1e-6)
    np.testing.assert_allclose(value(out["gradients"]["b"]), gb.numpy(), rtol=1e-6)


def test_output_gradients_give_a_vector_jacobian_product() -> None:
    doc = {
        "tensors": {"x": [1.0, 2.0, 3.0]},
        "expression": "x * x",
        "sources": ["x"],
        "output_gradients": [1.0, 0.5, -1.0],
    }
    x = tf.constant([1.0, 2.0, 3.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = x * x
    want = tape.gradient(y, x, output_gradients=tf.constant([1.0, 0.5, -1.0]))
    np.testing.assert_allclose(value(run_document(doc)["gradients"]["x"]), want.numpy())


def test_unconnected_source_is_null_by_default_and_zeros_on_request() -> None:
    doc = {"tensors": {"x": 2.0, "w": [1.0, 2.0]}, "expression": "x * x", "sources": ["x", "w"]}
    out = run_document(doc)
    assert out["gradients"]["w"] is None
    assert any("'w' is not connected" in n for n in out["notes"])
    zero = run_document({**doc, "unconnected_gradients": "zero"})
    assert zero["gradients"]["w"] == {"value": [0.0, 0.0], "dtype": "float32", "shape": [2]}


def test_jacobian_of_a_sigmoid_layer_matches_tape_jacobian() -> None:
    rng = np.random.default_rng(0)
    xv, wv, bv = rng.normal(size=(7, 5)), rng.normal(size=(5, 3)), rng.normal(size=(3,))
    doc = {
        "tensors": {"x": xv.tolist(), "w": wv.tolist(), "b": bv.tolist()},
        "expression": "sigmoid(x @ w + b)",
        "sources": ["w", "b"],
        "mode": "jacobian",
    }
    x, w, b = (tf.constant(v, tf.float32) for v in (xv, wv, bv))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([w, b])
        y = tf.sigmoid(x @ w + b)
    out = run_document(doc)
    assert out["jacobians"]["w"]["shape"] == [7, 3, 5, 3]
    np.testing.assert_allclose(value(out["jacobians"]["w"]), tape.jacobian(y, w).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(value(out["jacobians"]["b"]), tape.jacobian(y, b).numpy(), rtol=1e-5, atol=1e-6)


def test_batch_jacobian_matches_tape_batch_jacobian() -> None:
    rng = np.random.default_rng(1)
    xv, wv = rng.normal(size=(4, 3)), rng.normal(size=(3, 2))
    doc = {
        "tensors": {"x": xv.tolist(), "w": wv.tolist()},
        "expression": "tanh(x @ w)",
        "sources": ["x"],
        "mode": "batch_jacobian",
    }
    x, w = tf.constant(xv, tf.float32), tf.constant(wv, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.tanh(x @ w)
    want = tape.batch_jacobian(y, x)
    out = run_document(doc)
    assert out["jacobians"]["x"]["shape"] == [4, 2, 3]
    np.testing.assert_allclose(value(out["jacobians"]["x"]), want.numpy(), rtol=1e-5, atol=1e-6)


def test_hessian_is_the_jacobian_of_the_gradient() -> None:
    xv = [[0.5, -1.0], [2.0, 0.25]]
    doc = {"tensors": {"x": xv}, "expression": "reduce_sum(x * x * x)", "sources": ["x"], "mode": "hessian"}
    x = tf.constant(xv)
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = tf.reduce_sum(x * x * x)
        g = inner.gradient(y, x)
    want = outer.jacobian(g, x)
    out = run_document(doc)
    assert out["hessians"]["x"]["shape"] == [2, 2, 2, 2]
    np.testing.assert_allclose(value(out["hessians"]["x"]), want.numpy(), rtol=1e-6)


def test_jvp_matches_forward_accumulator() -> None:
    xv, tv = [1.0, 2.0, 3.0], [0.1, 0.0, -1.0]
    doc = {"tensors": {"x": xv}, "expression": "sin(x) * x", "sources": ["x"], "mode": "jvp", "tangents": {"x": tv}}
    x = tf.constant(xv)
    with tf.autodiff.ForwardAccumulator(x, tf.constant(tv)) as acc:
        y = tf.sin(x) * x
    out = run_document(doc)
    np.testing.assert_allclose(value(out["jvp"]), acc.jvp(y).numpy(), rtol=1e-6)
    assert out["jvp"]["shape"] == [3]


def test_sparse_gather_gradient_comes_back_dense() -> None:
    doc = {
        "tensors": {"p": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]},
        "ops": [
            {"id": "g", "op": "gather", "inputs": ["p", [2, 0, 2]]},
            {"id": "y", "op": "reduce_sum", "inputs": ["g"]},
        ],
        "target": "y",
        "sources": ["p"],
    }
    out = run_document(doc)
    assert out["gradients"]["p"] == {"value": [[1.0, 1.0], [0.0, 0.0], [2.0, 2.0]], "dtype": "float32", "shape": [3, 2]}


def test_float64_sources_keep_their_dtype_and_literals_follow_them() -> None:
    doc = {"tensors": {"x": {"value": [1.5, 2.5], "dtype": "float64"}}, "expression": "x * 3", "sources": ["x"]}
    out = run_document(doc)
    assert out["gradients"]["x"] == {"value": [3.0, 3.0], "dtype": "float64", "shape": [2]}


def test_non_finite_values_are_strings_with_a_note() -> None:
    doc = {"tensors": {"x": [0.0, 1.0, "Infinity"]}, "expression": "math.log(x)", "sources": ["x"]}
    out = run_document(doc)
    assert out["target"]["value"] == ["-Infinity", 0.0, "Infinity"]
    assert out["gradients"]["x"]["value"] == ["Infinity", 1.0, 0.0]
    assert any("non-finite" in n for n in out["notes"])


def test_b64_in_and_out_round_trips_exact_bytes() -> None:
    import base64

    raw = np.arange(6, dtype="<f4").reshape(2, 3)
    doc = {
        "tensors": {"x": {"b64": base64.b64encode(raw.tobytes()).decode(), "dtype": "float32", "shape": [2, 3]}},
        "expression": "reduce_sum(x * x)",
        "sources": ["x"],
        "encoding": "b64",
    }
    out = run_document(doc)
    grad = np.frombuffer(base64.b64decode(out["gradients"]["x"]["b64"]), dtype="<f4").reshape(2, 3)
    np.testing.assert_array_equal(grad, 2 * raw)


# One request per kind of result document: dtypes, non-finite values, several targets, modes, b64.
IN_PROCESS_DOCS: dict[str, dict[str, Any]] = {
    "float32": {"tensors": {"x": [0.1, 0.2, 1.0 / 3]}, "expression": "x * x", "sources": ["x"]},
    "float16": {"tensors": {"x": {"value": [0.1, 0.7], "dtype": "float16"}}, "expression": "x * x", "sources": ["x"]},
    "bfloat16": {"tensors": {"x": {"value": [0.1, 0.7], "dtype": "bfloat16"}}, "expression": "x * x", "sources": ["x"]},
    "float64": {"tensors": {"x": {"value": [0.1, 0.7], "dtype": "float64"}}, "expression": "x * x", "sources": ["x"]},
    "non-finite": {"tensors": {"x": [0.0, 1.0, "Infinity"]}, "expression": "math.log(x) * x", "sources": ["x"]},
    "unconnected": {"tensors": {"x": 0.3, "y": 2.0}, "expression": "x * 3", "sources": ["x", "y"]},
    "several targets": {
        "tensors": {"a": [0.1, 2.0]},
        "ops": [{"id": "p", "op": "multiply", "inputs": ["a", "a"]}, {"id": "q", "op": "exp", "inputs": ["a"]}],
        "target": ["p", "q"],
        "sources": ["a"],
    },
    "jacobian": {"tensors": {"x": [0.1, 0.2]}, "expression": "x * x", "sources": ["x"], "mode": "jacobian"},
    "jvp": {
        "tensors": {"x": [0.1, 0.2]},
        "expression": "sin(x)",
        "sources": ["x"],
        "mode": "jvp",
        "tangents": {"x": [1.0, 0.3]},
    },
    "b64": {**EXAMPLE_2, "encoding": "b64"},
}


def same_document(got: Any, written: Any, dtype: str | None = None) -> bool:
    """Whether a document built in process says what its JSON text says, value for value in its dtype."""
    if isinstance(got, dict) and isinstance(written, dict):
        if got.keys() != written.keys():
            return False
        if "value" in got:
            dtype = got["dtype"]
            as_dtype = {"bfloat16": "float32", "float16": "float16"}.get(dtype, dtype)
            non_finite = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}

            def array(v: Any) -> np.ndarray:
                return np.asarray(
                    [non_finite.get(e, e) if isinstance(e, str) else e for e in np.ravel(np.asarray(v, dtype=object))]
                ).astype(as_dtype)

            equal_values = np.array_equal(array(got["value"]), array(written["value"]), equal_nan=True)
            return equal_values and all(same_document(got[k], written[k]) for k in got if k != "value")
        return all(same_document(got[k], written[k]) for k in got)
    if isinstance(got, list) and isinstance(written, list):
        return len(got) == len(written) and all(same_document(g, w) for g, w in zip(got, written, strict=True))
    return type(got) is type(written) and got == written


@pytest.mark.parametrize("doc", IN_PROCESS_DOCS.values(), ids=IN_PROCESS_DOCS.keys())
def test_the_in_process_document_says_what_the_json_one_does(doc: dict[str, Any]) -> None:
    got, written = run_document(doc), orjson.loads(run_json(doc))
    assert same_document(got, written), (got, written)
    assert run_document(orjson.dumps(doc)) == got  # JSON text in, the same document out
    orjson.dumps(got)  # plain Python objects: no NumPy arrays left (orjson writes those only when told)


def test_the_in_process_document_holds_the_exact_float32_values() -> None:
    # JSON text holds the shortest decimal that reads back as the same float32; the document
    # built in process holds the float32 itself, as TensorFlow's .numpy().tolist() does.
    out = run_document(IN_PROCESS_DOCS["float32"])
    assert out["gradients"]["x"]["value"][0] == float(np.float32(0.2)) == 0.20000000298023224  # 2x at 0.1
    assert orjson.loads(run_json(IN_PROCESS_DOCS["float32"]))["gradients"]["x"]["value"][0] == 0.2


def test_an_int_source_is_an_error_naming_it_and_its_dtype() -> None:
    doc = {"tensors": {"n": {"value": [1, 2], "dtype": "int32"}}, "expression": "n * n", "sources": ["n"]}
    with pytest.raises(GraphError) as info:
        run_document(doc)
    (error,) = info.value.errors
    assert error.path == "/sources/0"
    assert "'n'" in error.message and "int32" in error.message and "floating-point" in error.message


def test_a_runtime_failure_names_the_op() -> None:
    # A singular matrix is only found when TensorFlow runs the op.
    doc = {
        "tensors": {"m": [[1.0, 2.0], [2.0, 4.0]]},
        "ops": [{"id": "inv", "op": "linalg.inv", "inputs": ["m"]}, {"id": "y", "op": "reduce_sum", "inputs": ["inv"]}],
        "target": "y",
        "sources": ["m"],
    }
    with pytest.raises(ExecutionError) as info:
        run_document(doc)
    (error,) = info.value.errors
    assert error.path == "/ops/0"
    assert "op 'inv'" in error.message and "{{" not in error.message


def chain_document(values: list[float], length: int = 40) -> dict[str, Any]:
    ops, prev = [], "x"
    for i in range(length):
        op = ("sin", "multiply", "add", "tanh")[i % 4]
        ops.append({"id": f"o{i}", "op": op, "inputs": [prev] if op in ("sin", "tanh") else [prev, 0.5]})
        prev = f"o{i}"
    ops.append({"id": "y", "op": "reduce_sum", "inputs": [prev]})
    return {"tensors": {"x": values}, "ops": ops, "target": "y", "sources": ["x"]}


@pytest.mark.parametrize("mode", ["gradient", "jacobian", "hessian", "jvp"])
def test_compiled_runs_match_eager_runs_and_are_counted(mode: str) -> None:
    from tapecore.request import parse_request
    from worker.engine.cache import CompiledFunctions
    from worker.engine.execute import run_request

    cache = CompiledFunctions(compile_after=2)
    rng = np.random.default_rng(3)
    for _ in range(3):
        doc = {**chain_document(rng.normal(size=5).tolist()), "mode": mode}
        if mode == "jvp":
            doc["tangents"] = {"x": rng.normal(size=5).tolist()}
        req = parse_request(doc)
        cached, eager = run_request(req, cache=cache), run_request(req, cache=None)
        key = {"gradient": "gradients", "jacobian": "jacobians", "hessian": "hessians", "jvp": "jvp"}[mode]
        got = cached[key] if mode == "jvp" else cached[key]["x"]
        want = eager[key] if mode == "jvp" else eager[key]["x"]
        np.testing.assert_allclose(value(got), value(want), rtol=1e-5, atol=1e-6)
        assert cached["target"]["value"] == pytest.approx(eager["target"]["value"], rel=1e-5)
    assert (cache.stats.compiles, cache.stats.hits, cache.stats.misses) == (1, 1, 2)


def test_a_runtime_failure_in_a_compiled_function_still_names_the_op() -> None:
    from tapecore.request import parse_request
    from worker.engine.cache import CompiledFunctions
    from worker.engine.execute import run_request

    cache = CompiledFunctions(compile_after=1)
    doc = {"tensors": {"m": [[1.0, 2.0], [2.0, 4.0]]}, "expression": "reduce_sum(linalg.inv(m))", "sources": ["m"]}
    for _ in range(2):
        with pytest.raises(ExecutionError) as info:
            run_request(parse_request(doc), cache=cache)
        assert info.value.errors[0].path == "/expression" and "linalg.inv" in info.value.errors[0].message
    good = {**doc, "tensors": {"m": [[2.0, 0.0], [0.0, 4.0]]}}
    assert run_request(parse_request(good), cache=cache)["target"]["value"] == pytest.approx(0.75)


def test_compiled_runs_keep_unconnected_sources_targets_and_output_gradients_in_place() -> None:
    from tapecore.request import parse_request
    from worker.engine.cache import CompiledFunctions
    from worker.engine.execute import run_request

    cache = CompiledFunctions(compile_after=1)
    tensors: dict[str, Any] = {"x": [1.0, 2.0], "u": [3.0, 4.0], "z": [0.5, -1.0]}
    doc: dict[str, Any] = {
        "tensors": tensors,
        "ops": [
            {"id": "a", "op": "multiply", "inputs": ["x", "z"]},
            {"id": "b", "op": "square", "inputs": ["z"]},
        ],
        "target": ["a", "b"],
        "sources": ["x", "u", "z"],
        "output_gradients": [[1.0, 2.0], [3.0, 5.0]],
    }
    for values in ([0.5, -1.0], [2.0, 3.0]):
        req = parse_request({**doc, "tensors": {**tensors, "z": values}})
        cached, eager = run_request(req, cache=cache), run_request(req, cache=None)
        assert orjson.loads(dumps(cached)) == orjson.loads(dumps(eager))
        assert cached["gradients"]["u"] is None
        z = np.asarray(values)
        np.testing.assert_allclose(value(cached["gradients"]["x"]), z * [1.0, 2.0])
        np.testing.assert_allclose(value(cached["gradients"]["z"]), [1.0, 4.0] + 2 * z * [3.0, 5.0])
    assert (cache.stats.compiles, cache.stats.hits) == (1, 1)


def test_compiled_graphs_are_called_as_one_op_without_tf_function_overhead() -> None:
    """The call as one op relies on a private TensorFlow attribute: a TF upgrade that moves it fails here."""
    from tapecore.request import parse_request
    from worker.engine.cache import CompiledFunctions
    from worker.engine.execute import CompiledGraph, run_request

    cache = CompiledFunctions(compile_after=1)
    run_request(parse_request({"tensors": {"x": 3.0}, "expression": "x * x", "sources": ["x"]}), cache=cache)
    (compiled,) = cache._functions.values()
    assert isinstance(compiled, CompiledGraph)
    assert compiled.as_op
