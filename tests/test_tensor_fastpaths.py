"""The fast paths over tensor values agree with the slow ones they stand in for.

Checking elements, counting base64 bytes and packing values as `b64` each have a fast way
(builtins over iterators, no per-element Python) and a slow, obvious one: the fast way must
accept, refuse and produce exactly what the slow way does.
"""

from __future__ import annotations

import base64
import binascii
import itertools
from typing import Any
from unittest import mock

import ml_dtypes
import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.routes.gradients import PACK_MIN_ELEMENTS
from tapecore import tensors
from tapecore.dtypes import DTYPES
from tapecore.errors import ErrorCollector
from tapecore.limits import DEFAULT_LIMITS
from tapecore.tensors import b64_size, packed, parse_tensor


def b64decode_size(data: str) -> int | None:
    try:
        return len(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError):
        return None


def test_b64_size_agrees_with_b64decode_on_every_short_string() -> None:
    # Digits of each kind, the pad, a space, a newline, a non-base64 and a non-ASCII character.
    for length in range(7):
        for chars in itertools.product("Q/+= \n-é", repeat=length):
            data = "".join(chars)
            assert b64_size(data) == b64decode_size(data), data


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 1000, 4_000_000])
def test_b64_size_counts_the_bytes_of_canonical_base64(size: int) -> None:
    data = base64.b64encode(bytes(size)).decode("ascii")
    assert b64_size(data) == size


LEAVES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**70), 2**70),
    st.integers(-(2**31), 2**31 - 1),
    st.booleans(),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "nan", "1.5", ""]),
    st.none(),
    st.just({}),
)


@st.composite
def nested_values(draw: st.DrawFn) -> Any:
    """Mostly rectangular nested lists of one kind of element, sometimes with one thing wrong."""
    if draw(st.booleans()):
        return draw(st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4), max_leaves=24))
    shape = draw(st.lists(st.integers(0, 4), min_size=1, max_size=3))
    leaf: st.SearchStrategy[Any] = draw(
        st.sampled_from(
            [
                st.floats(allow_nan=False, allow_infinity=False),
                st.integers(-(2**40), 2**40),
                st.booleans(),
                st.one_of(st.floats(allow_nan=False), st.sampled_from(["NaN", "Infinity", "-Infinity"])),
            ]
        )
    )
    flat: list[Any] = draw(st.lists(leaf, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    value = np.array(flat, dtype=object).reshape(shape).tolist()
    mutate = draw(st.booleans())
    if flat and mutate:
        where = draw(st.integers(0, len(flat) - 1))
        row = value
        for n in np.unravel_index(where, shape)[:-1]:
            row = row[n]
        last = int(np.unravel_index(where, shape)[-1])
        if draw(st.booleans()):
            row[last] = draw(st.one_of(LEAVES, st.lists(LEAVES, max_size=2)))
        else:
            del row[last]
    return value


def check(value: Any, dtype: str) -> tuple[Any, list[tuple[str, str]]]:
    errors = ErrorCollector()
    spec = parse_tensor({"value": value, "dtype": dtype}, "/tensors/x", errors, DEFAULT_LIMITS)
    return spec, [(e.path, e.message) for e in errors.errors + errors.limit_errors]


@settings(max_examples=400, deadline=None)
@given(value=nested_values(), dtype=st.sampled_from(DTYPES))
def test_the_fast_element_check_agrees_with_the_walk(value: Any, dtype: str) -> None:
    fast = check(value, dtype)
    with mock.patch.object(tensors, "_fits", return_value=False):
        slow = check(value, dtype)
    assert fast == slow


def test_the_fast_check_decides_the_common_cases_alone() -> None:
    rows = np.arange(12.0).reshape(3, 4).tolist()
    assert tensors._fits(rows, (3, 4), "float32")
    assert tensors._fits([[1, 2.5], ["NaN", "-Infinity"]], (2, 2), "float64")
    assert tensors._fits([[1, -(2**31)]], (1, 2), "int32")
    assert tensors._fits([True, False], (2,), "bool")
    assert not tensors._fits([[1, 2**31]], (1, 2), "int32")
    assert not tensors._fits([[1.0, True]], (1, 2), "float32")
    assert not tensors._fits([[1.0], [2.0, 3.0]], (2, 1), "float32")


def test_a_bad_element_is_still_named_by_its_pointer() -> None:
    value = np.zeros((3, 4)).tolist()
    value[2][1] = True
    assert check(value, "float32")[1] == [
        ("/tensors/x/value/2/1", 'must be a number or one of "NaN", "Infinity", "-Infinity" for float32, not True')
    ]


# Values whose conversion is easy to get wrong: ties, subnormals, the edge of the range and
# past it (infinity, as tf.constant makes it), big integers, negative zero.
FLOAT_EDGES = [
    0.1,
    -0.0,
    1.0000000596046448,  # halfway between two float32s
    1.0000000596046449,
    3.4028235e38,
    3.4028235677973362e38,  # rounds down to the largest float32
    3.4028235677973366e38,  # rounds up to infinity
    1e39,
    -1e39,
    1.4e-45,
    7e-46,
    5e-324,
    2**24 + 1,
    2**60 + 1,
    10**30,
    -7,
]


@pytest.mark.parametrize(
    ("dtype", "value"),
    [
        ("float32", FLOAT_EDGES),
        ("float64", FLOAT_EDGES),
        ("float32", [[1.5, 2], [-3, 0.25]]),
        ("int32", [[-(2**31), 2**31 - 1], [0, 7]]),
        ("int64", [-(2**63), 2**63 - 1, 0]),
        ("bool", [[True, False, True]]),
        ("float32", 2.5),
    ],
)
def test_packed_bytes_are_the_arrays_the_worker_would_make(dtype: str, value: Any) -> None:
    from worker.engine.codec import decode_tensor, decode_value

    spec, errors = check(value, dtype)
    assert not errors and spec is not None
    doc = packed(spec)
    assert doc is not None and doc["dtype"] == dtype and doc["shape"] == list(np.shape(value))
    from_json = decode_value(value, dtype).reshape(spec.shape)
    packed_spec = parse_tensor(doc, "/t", ErrorCollector(), DEFAULT_LIMITS)
    assert packed_spec is not None
    from_b64 = decode_tensor(packed_spec)
    assert from_b64.dtype == from_json.dtype
    assert from_b64.tobytes() == from_json.tobytes()


@pytest.mark.parametrize(
    ("dtype", "value"),
    [
        ("float16", [1.0, 2.0]),
        ("bfloat16", [1.0, 2.0]),
        ("float32", [1.0, "NaN"]),
        ("float64", [1.0, 10**400]),
    ],
    ids=["float16", "bfloat16", "non-finite-string", "int-past-a-double"],
)
def test_what_cannot_be_packed_stays_json(dtype: str, value: Any) -> None:
    spec, errors = check(value, dtype)
    assert not errors and spec is not None
    assert packed(spec) is None


def test_fill_and_b64_tensors_are_not_packed() -> None:
    fill = parse_tensor({"fill": 1.0, "shape": [4]}, "/t", ErrorCollector(), DEFAULT_LIMITS)
    b64 = parse_tensor({"b64": "AAAAAA==", "shape": [1]}, "/t", ErrorCollector(), DEFAULT_LIMITS)
    assert fill is not None and b64 is not None
    assert packed(fill) is None and packed(b64) is None


def test_a_big_value_tensor_reaches_the_worker_as_b64_with_the_same_answer(client: Any, worker: Any) -> None:
    from tapecore.protocol import payload_key
    from worker.engine import run_json

    x = np.linspace(-2, 2, PACK_MIN_ELEMENTS).reshape(128, -1)
    doc = {
        "tensors": {"x": {"value": x.tolist()}, "k": [1.0, 2.0], "n": {"value": x.T.tolist(), "dtype": "float64"}},
        "expression": 'reduce_sum(x * x) + reduce_sum(k) + cast(reduce_sum(n * n), dtype="float32")',
        "sources": ["x", "n"],
    }
    worker.register()
    # Sent as orjson writes it, not as Flask's test client would (it sorts keys): order matters.
    posted = client.post("/v1/gradients", data=orjson.dumps(doc), content_type="application/json")
    assert posted.status_code == 202
    job_id = posted.get_json()["id"]
    sent = orjson.loads(worker.redis.get(payload_key(job_id)))
    assert set(sent["tensors"]["x"]) == {"b64", "dtype", "shape"}
    assert set(sent["tensors"]["n"]) == {"b64", "dtype", "shape"}
    assert sent["tensors"]["k"] == [1.0, 2.0]  # small: as the client wrote it
    assert list(sent["tensors"]) == ["x", "k", "n"]
    worker.work()
    result = client.get(f"/v1/jobs/{job_id}").get_json()["result"]
    assert result == orjson.loads(run_json(doc))


def test_bfloat16_values_pack_to_nothing_but_still_run() -> None:
    # The worker's own conversion covers the dtypes `array` cannot write.
    spec, _ = check([1.0, 2.5], "bfloat16")
    assert spec is not None and packed(spec) is None
    from worker.engine.codec import decode_value

    assert decode_value([1.0, 2.5], "bfloat16").dtype == np.dtype(ml_dtypes.bfloat16)


def test_a_batch_hands_its_big_tensors_to_the_worker_as_b64(client: Any, worker: Any) -> None:
    from tapecore.protocol import payload_key

    big = {
        "tensors": {"x": np.ones((PACK_MIN_ELEMENTS,)).tolist()},
        "expression": "reduce_sum(x * x)",
        "sources": ["x"],
    }
    small = {"tensors": {"x": 3.0}, "expression": "x * x", "sources": ["x"]}
    worker.register()
    posted = client.post("/v1/batches", json={"graphs": [big, small]})
    assert posted.status_code == 202
    job_id = posted.get_json()["id"]
    items = orjson.loads(worker.redis.get(payload_key(job_id)))
    assert set(items[0]["graph"]["tensors"]["x"]) == {"b64", "dtype", "shape"}
    assert items[1]["graph"] == small
    worker.work()
    results = client.get(f"/v1/jobs/{job_id}").get_json()["result"]["results"]
    assert results[0]["result"]["gradients"]["x"]["value"] == [2.0] * PACK_MIN_ELEMENTS
    assert results[1]["result"]["target"]["value"] == 9.0


CONVERSION_EDGES: list[Any] = [
    *FLOAT_EDGES,
    65504.0,  # the largest float16, then values that round to it or past it
    65519.99,
    65520.0,
    6e-8,
    3e-8,
    1.00048828125,
    1.00390625,
    1.0039062500000002,
    3.3961e38,
    "NaN",
    "Infinity",
    "-Infinity",
]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_decoding_by_the_checked_shape_converts_as_numpy_does(dtype: str) -> None:
    from worker.engine.codec import decode_tensor, decode_value

    rng = np.random.default_rng(7)
    numbers = [*rng.standard_normal(200).tolist(), *(rng.standard_normal(200) * 1e30).tolist()]
    flat = (CONVERSION_EDGES + numbers)[: (len(CONVERSION_EDGES) + len(numbers)) // 6 * 6]
    value = np.array(flat, dtype=object).reshape(-1, 3, 2).tolist()
    spec, errors = check(value, dtype)
    assert not errors and spec is not None
    got = decode_tensor(spec)
    want = decode_value(value, dtype)  # NumPy's own nested-list conversion, via float64
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize(
    ("dtype", "value"),
    [("int32", [[-(2**31), 7], [2**31 - 1, 0]]), ("int64", [[2**63 - 1, -(2**63)]]), ("bool", [[True], [False]])],
)
def test_decoding_integers_and_booleans_by_the_checked_shape(dtype: str, value: Any) -> None:
    from worker.engine.codec import decode_tensor, decode_value

    spec, _ = check(value, dtype)
    assert spec is not None
    got, want = decode_tensor(spec), decode_value(value, dtype)
    assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()


@pytest.mark.parametrize(
    ("array", "dtype"),
    [
        (np.asarray(np.float32(3.0)), "float32"),
        (np.arange(6, dtype=np.float64).reshape(2, 3).T, "float64"),  # not contiguous
        (np.arange(4, dtype=np.float32).astype(ml_dtypes.bfloat16), "bfloat16"),
    ],
    ids=["scalar", "transposed", "bfloat16"],
)
def test_b64_results_hold_the_arrays_bytes(array: np.ndarray, dtype: str) -> None:
    from worker.engine.codec import NUMPY_DTYPES, encode_array

    doc = encode_array(array, dtype, "b64")
    assert base64.b64decode(doc["b64"]) == np.ascontiguousarray(array, dtype=NUMPY_DTYPES[dtype]).tobytes()
    assert doc["shape"] == list(array.shape)
