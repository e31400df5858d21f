"""The cost model in the validator: every request's cost bounded before anything is queued.

One test per finding of issue 11's "what was reproduced" (each failed on 5ccada6), then
class-level tests: a hostile shape anywhere a shape is made, every mode, every op's cost rule.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from tapecore.cost import JSON_ELEMENT_CHARS, encoded_bytes
from tapecore.errors import LimitExceeded, TapeserveError, TensorTooLarge
from tapecore.limits import DEFAULT_LIMITS, Limits
from tapecore.ops import REGISTRY
from tapecore.request import MODES, GradientRequest, parse_request

PROBLEM = "application/problem+json"
OUTER = "einsum(x, x, equation='i,j->ij')"  # the registry has no `outer`: einsum or tensordot(axes=0)


@pytest.fixture(scope="module")
def tf() -> Any:
    return pytest.importorskip("tensorflow")


def refusal(doc: Any, limits: Limits = DEFAULT_LIMITS) -> TapeserveError:
    """Parse a document that must be refused by a limit; return the error."""
    with pytest.raises(LimitExceeded) as caught:
        parse_request(doc, REGISTRY, limits)
    return caught.value


def item(error: TapeserveError, limit: str) -> dict[str, Any]:
    """The error item that names this limit, with its maximum and estimate."""
    items = [e for e in error.problem()["errors"] if e.get("limit") == limit]
    assert items, error.problem()["errors"]
    found: dict[str, Any] = items[0]
    assert found["estimate"] > found["maximum"], found
    assert f"{limit} = {found['maximum']}" in found["message"], found
    return found


def posted(client: Any, worker: Any, doc: Any, status: int) -> dict[str, Any]:
    """POST a document to the API; assert a problem with this status and nothing queued."""
    worker.register()
    response = client.post("/v1/gradients", data=orjson.dumps(doc), content_type="application/json")
    text = response.get_data(as_text=True)
    assert response.status_code == status, text
    assert response.mimetype == PROBLEM
    body: dict[str, Any] = orjson.loads(text)
    assert "limit" in body["type"], body
    return body


def vector(n: int) -> dict[str, Any]:
    return {"fill": 0.5, "shape": [n]}


# --- the reproduced findings ----------------------------------------------------------------------

EMPTY_ROWS = b'{"tensors":{"x":{"fill":1,"shape":[33554432,0]}},"expression":"reduce_sum(x)","sources":["x"]}'


def test_the_107_byte_request_of_33554432_empty_rows_is_refused_before_it_runs(client: Any, worker: Any) -> None:
    # It was accepted (0 elements): a 100 MB answer, and the TF process peaked at 4 GB.
    error = refusal(orjson.loads(EMPTY_ROWS))
    assert isinstance(error, TensorTooLarge) and error.status == 413
    found = item(error, "max_dimension")
    assert found["path"] == "/tensors/x" and found["estimate"] == 33_554_432
    body = posted(client, worker, orjson.loads(EMPTY_ROWS), 413)
    assert body["errors"][0]["limit"] == "max_dimension" and body["errors"][0]["estimate"] == 33_554_432


def test_empty_rows_within_max_dimension_still_count_as_rows() -> None:
    # 16,777,216 empty rows: every axis within max_dimension, but each row is "[]," in JSON
    # and counted as one element: the input is at max_tensor_elements, its gradient's JSON over.
    doc = {"tensors": {"x": {"fill": 1, "shape": [16_777_216, 0]}}, "expression": "reduce_sum(x)", "sources": ["x"]}
    found = item(refusal(doc), "max_result_bytes")
    assert found["path"] == "/sources/0"
    over = {**doc, "tensors": {"x": {"fill": 1, "shape": [16_777_217, 0]}}}
    assert item(refusal(over, dataclasses.replace(DEFAULT_LIMITS, max_dimension=2**25)), "max_tensor_elements")


def test_a_dimension_past_int64_range_is_a_413_not_a_500(client: Any, worker: Any) -> None:
    # [0, 15032385529] held 0 elements, so it passed; TF wrapped the axis to int32
    # (2147483641) and the job failed with "internal error: ValueError".
    doc = {"tensors": {"x": {"fill": 1, "shape": [0, 15_032_385_529]}}, "expression": "reduce_sum(x)", "sources": ["x"]}
    found = item(refusal(doc), "max_dimension")
    assert found["path"] == "/tensors/x" and found["estimate"] == 15_032_385_529
    body = posted(client, worker, doc, 413)
    assert body["errors"][0]["limit"] == "max_dimension"


@pytest.mark.parametrize("form", ["expression", "ops"])
def test_reshape_of_an_empty_tensor_to_2147483647_rows_is_refused(form: str) -> None:
    tensors = {"x": {"fill": 1, "shape": [0]}}
    if form == "expression":
        doc: dict[str, Any] = {"tensors": tensors, "expression": "reduce_sum(reshape(x, shape=[2147483647, 0]))"}
        where = "/expression"
    else:
        ops = [
            {"id": "r", "op": "reshape", "inputs": ["x"], "attrs": {"shape": [2147483647, 0]}},
            {"id": "s", "op": "reduce_sum", "inputs": ["r"]},
        ]
        doc = {"tensors": tensors, "ops": ops, "target": "s"}
        where = "/ops/0"
    found = item(refusal({**doc, "sources": ["x"]}), "max_dimension")
    assert found["path"] == where and found["estimate"] == 2147483647
    if form == "expression":
        assert found["position"] == doc["expression"].index("reshape")


def test_the_109_byte_request_for_the_gradient_of_a_4096_square_fill_is_refused_for_its_result() -> None:
    # It stored ~96 MB in Redis for an hour. As JSON its worst case is 16 characters a float32.
    doc = {"tensors": {"x": {"fill": 1, "shape": [4096, 4096]}}, "expression": "reduce_sum(x)", "sources": ["x"]}
    found = item(refusal(doc), "max_result_bytes")
    assert found["path"] == "/sources/0" and found["estimate"] >= 4096 * 4096 * 16
    assert "as json" in found["message"]
    # As base64 it is 4/3 of its 64 MiB: within the limit, and estimated exactly.
    cost = parse_request({**doc, "encoding": "b64"}).cost
    assert cost is not None and 4 * 4096 * 4096 * 4 // 3 < cost.result_bytes < DEFAULT_LIMITS.max_result_bytes


@pytest.mark.parametrize("n", [1024, 2048])
def test_the_jacobian_of_an_outer_product_is_refused_for_its_memory(n: int, client: Any, worker: Any) -> None:
    # 1,024: 20 s and over 5 GB in the TF process; 2,048: "Graph execution error" after 20 s.
    doc = {
        "tensors": {"x": vector(n)},
        "expression": f"reduce_sum({OUTER}, axis=1)",
        "sources": ["x"],
        "mode": "jacobian",
    }
    found = item(refusal(doc), "max_memory_bytes")
    assert found["path"] == "/mode" and found["estimate"] > 5e9
    assert "the jacobian would need about" in found["message"]
    body = posted(client, worker, doc, 422)
    assert body["errors"][0]["limit"] == "max_memory_bytes" and body["errors"][0]["path"] == "/mode"


def test_the_jacobian_of_a_small_outer_product_is_accepted_with_its_cost() -> None:
    doc = {
        "tensors": {"x": vector(64)},
        "expression": f"reduce_sum({OUTER}, axis=1)",
        "sources": ["x"],
        "mode": "jacobian",
    }
    cost = parse_request(doc).cost
    assert cost is not None
    # pfor: 64 target elements, each with the outer product's 4,096 floats in its working set.
    assert 64 * 4096 * 4 < cost.memory_bytes < DEFAULT_LIMITS.max_memory_bytes
    assert cost.result_bytes >= 64 * 64 * JSON_ELEMENT_CHARS["float32"]


@pytest.mark.parametrize("outer", [OUTER, "tensordot(x, x, axes=0)"])
def test_the_hessian_of_sin_of_an_outer_product_at_512_is_refused(outer: str) -> None:
    # 2.5 GB in the TF process.
    doc = {
        "tensors": {"x": vector(512)},
        "expression": f"reduce_sum(sin({outer}))",
        "sources": ["x"],
        "mode": "hessian",
    }
    found = item(refusal(doc), "max_memory_bytes")
    assert found["path"] == "/mode" and "the hessian would need" in found["message"]


def test_order_4_on_a_2048_square_input_is_refused_at_order() -> None:
    # ~1 GB more than the validator counted.
    doc = {
        "tensors": {"x": {"fill": 0.5, "shape": [2048, 2048]}},
        "expression": "reduce_sum(sin(x) * x)",
        "sources": ["x"],
    }
    assert parse_request({**doc, "order": 1}).cost is not None  # the same graph at order 1 fits
    found = item(refusal({**doc, "order": 4}), "max_memory_bytes")
    assert found["path"] == "/order" and "derivative of order 4" in found["message"]


@pytest.mark.parametrize("op", ["nn.max_pool2d", "nn.avg_pool2d"])
def test_a_same_pooling_window_of_2147483647_is_refused(op: str, client: Any, worker: Any) -> None:
    # max_pool2d ran for the whole 60 s time limit; avg_pool2d for 36 s.
    doc = {
        "tensors": {"x": {"fill": 1.0, "shape": [1, 4, 4, 1]}},
        "ops": [
            {"id": "p", "op": op, "inputs": ["x"], "attrs": {"ksize": 2147483647, "strides": 1, "padding": "SAME"}},
            {"id": "s", "op": "reduce_sum", "inputs": ["p"]},
        ],
        "target": "s",
        "sources": ["x"],
    }
    with pytest.raises(TapeserveError) as caught:
        parse_request(doc)
    error = caught.value.problem()["errors"][0]
    assert error["path"] == "/ops/0/attrs/ksize" and "SAME" in error["message"], error
    worker.register()
    response = client.post("/v1/gradients", json=doc)
    assert response.status_code == 422 and response.get_json()["errors"][0]["path"] == "/ops/0/attrs/ksize"


# --- windows, strides and dilations: bounded for every padding ------------------------------------

IMAGE = {"fill": 1.0, "shape": [1, 4, 4, 1]}
FILTERS = {"fill": 1.0, "shape": [2, 2, 1, 1]}


def pooled(op: str, **attrs: Any) -> dict[str, Any]:
    return {"tensors": {"x": IMAGE}, "ops": [{"id": "p", "op": op, "inputs": ["x"], "attrs": attrs}], "target": "p"}


def conv(**attrs: Any) -> dict[str, Any]:
    ops = [{"id": "p", "op": "nn.conv2d", "inputs": ["x", "f"], "attrs": attrs}]
    return {"tensors": {"x": IMAGE, "f": FILTERS}, "ops": ops, "target": "p"}


WINDOWS = [
    pytest.param(
        pooled("nn.max_pool2d", ksize=[1, 10], strides=1, padding="SAME"), "/ops/0/attrs/ksize", id="max-same"
    ),
    pytest.param(pooled("nn.avg_pool2d", ksize=5, strides=1, padding="VALID"), "/ops/0/attrs/ksize", id="avg-valid"),
    pytest.param(
        pooled("nn.max_pool2d", ksize=2, strides=2**31 - 1, padding="SAME"), "/ops/0/attrs/strides", id="stride"
    ),
    pytest.param(conv(strides=1, padding="SAME", dilations=2**30), "/ops/0/attrs/dilations", id="conv-dilation-same"),
    pytest.param(conv(strides=[7, 1], padding="VALID"), "/ops/0/attrs/strides", id="conv-stride"),
    pytest.param(
        {**conv(strides=1, padding="SAME"), "tensors": {"x": IMAGE, "f": {"fill": 1.0, "shape": [10, 1, 1, 1]}}},
        "/ops/0/inputs/1",
        id="conv-filter-same",
    ),
]


@pytest.mark.parametrize(("doc", "path"), WINDOWS)
def test_every_window_stride_and_dilation_is_bounded_by_the_input(doc: dict[str, Any], path: str) -> None:
    with pytest.raises(TapeserveError) as caught:
        parse_request({**doc, "sources": ["x"]})
    assert [e.path for e in caught.value.errors] == [path], caught.value.errors


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_windows_up_to_the_bound_are_accepted_and_charged_per_position(padding: str) -> None:
    window = 9 if padding == "SAME" else 4  # 2n + 1 and n, for n = 4
    doc = {**pooled("nn.max_pool2d", ksize=window, strides=1, padding=padding), "sources": ["x"]}
    request = parse_request(doc)
    assert request.cost is not None
    out = request.nodes[0].outputs[0].bound
    assert request.cost.flops >= out * window * window


@pytest.mark.parametrize("op", ["nn.max_pool2d", "nn.avg_pool2d"])
def test_a_window_within_its_bounds_but_slow_is_refused_for_its_compute(op: str) -> None:
    # 257 x 257 windows over a 1024 x 1024 image: 7e10 window positions, ~35 s forwards at
    # TF's 2e9 a second, as long again backwards.
    doc = {
        "tensors": {"x": {"fill": 1.0, "shape": [1, 1024, 1024, 1]}},
        "expression": f"reduce_sum({op}(x, ksize=257, strides=1, padding='SAME'))",
        "sources": ["x"],
    }
    found = item(refusal(doc), "max_flops")
    assert found["path"] == "/expression" and found["position"] == len("reduce_sum(")


# --- a hostile shape anywhere a shape is made ---------------------------------------------------

HUGE = 2**31 - 1
X = {"fill": 1.0, "shape": [2, 3]}
SHAPE_SITES = [
    pytest.param({"x": {"fill": 1, "shape": [HUGE, 0]}}, "reduce_sum(x)", "/tensors/x", id="fill"),
    pytest.param({"x": {"b64": "", "shape": [0, HUGE]}}, "reduce_sum(x)", "/tensors/x", id="b64"),
    pytest.param(
        {"x": {"fill": 1, "shape": [3, 0]}}, f"reduce_sum(reshape(x, shape=[{HUGE}, 0]))", "/expression", id="reshape"
    ),
    pytest.param(
        {"x": {"fill": 1, "shape": [1, 3]}}, f"reduce_sum(tile(x, multiples=[{HUGE}, 1]))", "/expression", id="tile"
    ),
    pytest.param(
        {"x": {"fill": 1, "shape": [1, 3]}},
        f"reduce_sum(broadcast_to(x, shape=[{HUGE}, 0, 3]))",
        "/expression",
        id="broadcast_to",
    ),
    pytest.param(
        {"x": {"fill": 1, "shape": [0, 3]}},
        f"reduce_sum(pad(x, paddings=[[{HUGE}, 0], [0, 0]]))",
        "/expression",
        id="pad",
    ),
    pytest.param(
        {"x": X, "i": {"value": [], "dtype": "int32"}},
        f"reduce_sum(one_hot(i, depth={2**20 + 1})) + reduce_sum(x)",
        "/expression",
        id="one_hot",
    ),
]


@pytest.mark.parametrize(("tensors", "expression", "path"), SHAPE_SITES)
def test_a_hostile_shape_anywhere_is_refused_with_a_pointer(tensors: Any, expression: str, path: str) -> None:
    small = dataclasses.replace(DEFAULT_LIMITS, max_dimension=2**20)
    doc = {"tensors": tensors, "expression": expression, "sources": ["x"]}
    with pytest.raises(TapeserveError) as caught:
        parse_request(doc, REGISTRY, small)
    errors = caught.value.problem()["errors"]
    assert any(e["path"] == path and e.get("limit") for e in errors), errors


def test_a_literal_with_many_empty_rows_counts_its_rows() -> None:
    # [[], [], ...]: no elements, but each row costs as one against max_tensor_elements.
    limits = dataclasses.replace(DEFAULT_LIMITS, max_tensor_elements=100)
    doc = {"tensors": {"x": X}, "expression": f"reduce_sum(x) + reduce_sum({[[]] * 101})", "sources": ["x"]}
    with pytest.raises(TapeserveError) as caught:
        parse_request(doc, REGISTRY, limits)
    assert any("max_tensor_elements" in e.message for e in caught.value.errors), caught.value.errors


@pytest.mark.parametrize("field", ["output_gradients", "tangents"])
def test_a_hostile_shape_in_output_gradients_or_tangents_is_refused(field: str) -> None:
    huge = {"fill": 1.0, "shape": [HUGE, 0]}
    doc: dict[str, Any] = {"tensors": {"x": X}, "expression": "x * 2", "sources": ["x"]}
    if field == "tangents":
        doc.update(mode="jvp", tangents={"x": huge})
    else:
        doc.update(output_gradients=huge)
    with pytest.raises(TensorTooLarge) as caught:
        parse_request(doc)
    assert caught.value.errors[0].path == f"/{field}" + ("/x" if field == "tangents" else "")


# --- every mode: an estimate, growing with what the mode does, refused with a pointer ------------

N = 32  # a 32 x 32 source: its Jacobian and Hessian are 1024 x 1024
MODE_DOCS = {
    "gradient": {},
    "jacobian": {},
    "batch_jacobian": {},
    "hessian": {},
    "jvp": {"tangents": {"x": {"fill": 1.0, "shape": [N, N]}}},
}


def mode_doc(mode: str, n: int = N) -> dict[str, Any]:
    doc = {"tensors": {"x": {"fill": 0.5, "shape": [n, n]}}, "expression": "tanh(x @ x) * x", "sources": ["x"]}
    if mode in ("gradient", "hessian"):
        doc["expression"] = f"reduce_sum({doc['expression']})"
    return {**doc, "mode": mode, **MODE_DOCS[mode]}


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_has_an_estimate_and_is_refused_at_the_mode_when_over(mode: str) -> None:
    request = parse_request(mode_doc(mode))
    cost = request.cost
    assert cost is not None and cost.memory_bytes > 0 and cost.flops > 0 and cost.result_bytes > 0
    # The forward pass alone: x, x @ x, tanh, the product (N x N float32 each).
    assert cost.memory_bytes >= 4 * N * N * 4
    assert cost.flops >= 2 * N**3
    tight = dataclasses.replace(DEFAULT_LIMITS, max_memory_bytes=cost.memory_bytes - 1, max_flops=cost.flops - 1)
    error = refusal(mode_doc(mode), tight)
    paths = {e.limit: e.path for e in error.errors}
    expected = "/mode" if mode != "gradient" else "/expression"
    assert paths == {"max_memory_bytes": expected, "max_flops": expected}, error.errors


def test_the_modes_that_vectorise_over_the_target_cost_more() -> None:
    costs = {mode: parse_request(mode_doc(mode)).cost for mode in MODES}
    memory = {mode: c.memory_bytes for mode, c in costs.items() if c is not None}
    assert memory["jacobian"] > 100 * memory["gradient"]  # 1,024 target elements
    assert memory["hessian"] > 100 * memory["gradient"]  # 1,024 source elements
    assert memory["gradient"] < memory["batch_jacobian"] < memory["jacobian"]  # 32 per example, not 1,024


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_each_order_costs_more_than_the_one_below(order: int) -> None:
    doc = {
        "tensors": {"x": {"fill": 0.5, "shape": [256, 256]}},
        "expression": "reduce_sum(sin(x) * x)",
        "sources": ["x"],
    }
    costs = [parse_request({**doc, "order": k}).cost for k in range(1, order + 1)]
    memory = [c.memory_bytes for c in costs if c is not None]
    assert memory == sorted(set(memory))


# --- the encoded result ---------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["json", "b64"])
@pytest.mark.parametrize(
    ("value", "dtype"),
    [
        ([[-1.17549435e-38, 3.4028235e38], [-0.1, 1.0]], "float32"),
        ([[-2.2250738585072014e-308, -1.2345678901234567e-300]], "float64"),
        ([["-Infinity", "NaN"], ["-Infinity", "-Infinity"]], "float32"),
        ([[], [], []], "float32"),
        ([[[]], [[]]], "float64"),
    ],
)
def test_the_result_estimate_is_an_upper_bound_on_what_the_engine_writes(
    value: Any, dtype: str, encoding: str, tf: Any
) -> None:
    from worker.engine import run_json

    doc = {
        "tensors": {"x": {"value": value, "dtype": dtype}},
        "expression": "x * 1",
        "sources": ["x"],
        "encoding": encoding,
    }
    request = parse_request(doc)
    written = run_json(doc)
    assert request.cost is not None and len(written) <= request.cost.result_bytes
    result = orjson.loads(written)
    for tensor in [result["target"], *result["gradients"].values()]:
        shape = tuple(tensor["shape"])
        assert len(orjson.dumps(tensor)) <= encoded_bytes(shape, tensor["dtype"], encoding)[0]


def test_the_cost_is_kept_on_a_cached_graph() -> None:
    from tapecore.parsecache import RequestCache

    cache = RequestCache()
    doc = mode_doc("jacobian")
    first, second = cache.parse(doc, REGISTRY, DEFAULT_LIMITS), cache.parse(doc, REGISTRY, DEFAULT_LIMITS)
    assert cache.hits == 1 and first.cost == second.cost and isinstance(second, GradientRequest)
