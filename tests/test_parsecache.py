"""Reusing checked graphs: a hit must accept and refuse exactly what a full check does."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tapecore.errors import TapeserveError
from tapecore.limits import DEFAULT_LIMITS
from tapecore.ops import REGISTRY
from tapecore.parsecache import RequestCache
from tapecore.request import parse_request
from tests.examples import EXAMPLE_2, EXAMPLE_2_GRAPH


def outcome(parse: Any, doc: Any) -> Any:
    try:
        req = parse(doc)
    except TapeserveError as exc:
        return ("error", exc.status, [(e.path, e.message) for e in exc.errors])
    return (
        "ok",
        {n: (t.shape, t.dtype, t.value, t.fill) for n, t in req.tensors.items()},
        req.output_gradients,
        req.tangents,
    )


def variants() -> list[dict[str, Any]]:
    base = copy.deepcopy(EXAMPLE_2_GRAPH)
    out = [base]
    new_values = copy.deepcopy(base)
    new_values["tensors"]["x"]["value"] = [[1, 2, 3], [4, 5, 6]]
    out.append(new_values)
    bad_value = copy.deepcopy(base)
    bad_value["tensors"]["x"]["value"] = [[1, "two", 3], [4, 5, 6]]
    out.append(bad_value)
    ragged = copy.deepcopy(base)
    ragged["tensors"]["x"]["value"] = [[1, 2, 3], [4, 5]]
    out.append(ragged)
    nan = copy.deepcopy(base)
    nan["tensors"]["z"]["value"] = "NaN"
    out.append(nan)
    with_og = {**copy.deepcopy(base), "target": "s", "output_gradients": [[1.0] * 3] * 2}
    out.append(with_og)
    bad_og = {**copy.deepcopy(base), "target": "s", "output_gradients": [[1.0] * 3] * 2}
    bad_og["output_gradients"][1] = [1.0, "x", 1.0]
    out.append(bad_og)
    jvp = {**copy.deepcopy(EXAMPLE_2), "mode": "jvp", "tangents": {"x": {"fill": 1.0, "shape": [2, 3]}, "z": 1.0}}
    out.append(jvp)
    jvp_bad = copy.deepcopy(jvp)
    jvp_bad["tangents"]["z"] = True
    out.append(jvp_bad)
    return out


@pytest.mark.parametrize("doc", variants())
def test_a_hit_accepts_and_refuses_exactly_what_a_full_check_does(doc: dict[str, Any]) -> None:
    cache = RequestCache()
    full = outcome(lambda d: parse_request(d, REGISTRY, DEFAULT_LIMITS), doc)
    for warm in variants():  # fill the cache with every skeleton, valid or not
        outcome(lambda d: cache.parse(d, REGISTRY, DEFAULT_LIMITS), warm)
    assert outcome(lambda d: cache.parse(d, REGISTRY, DEFAULT_LIMITS), doc) == full
    assert cache.hits > 0


def test_new_values_hit_and_new_shapes_miss() -> None:
    cache = RequestCache()
    cache.parse(EXAMPLE_2_GRAPH, REGISTRY, DEFAULT_LIMITS)
    other = copy.deepcopy(EXAMPLE_2_GRAPH)
    other["tensors"]["z"]["value"] = 7.0
    assert cache.parse(other, REGISTRY, DEFAULT_LIMITS).tensors["z"].value == 7.0
    assert (cache.hits, cache.misses) == (1, 1)
    wider = copy.deepcopy(EXAMPLE_2_GRAPH)
    wider["tensors"]["x"]["value"] = [[3, 3, 3, 3]] * 2
    assert cache.parse(wider, REGISTRY, DEFAULT_LIMITS).tensors["x"].shape == (2, 4)
    assert cache.misses == 2


def test_the_cache_keeps_graphs_not_values() -> None:
    cache = RequestCache()
    big = copy.deepcopy(EXAMPLE_2_GRAPH)
    big["tensors"]["x"] = {"fill": 3.0, "shape": [2, 3]}
    assert cache.parse(big, REGISTRY, DEFAULT_LIMITS).tensors["x"].fill == 3.0
    (kept,) = cache._entries.values()
    assert all(t.value is None and t.fill is None and t.b64 is None for t in kept.tensors.values())
    again = copy.deepcopy(big)
    again["tensors"]["x"]["fill"] = 4.0
    assert cache.parse(again, REGISTRY, DEFAULT_LIMITS).tensors["x"].fill == 4.0


def test_the_cache_is_a_bounded_lru_that_counts_hits_and_misses() -> None:
    cache = RequestCache(capacity=2)
    docs = [{"tensors": {"x": [1.0] * n}, "expression": "x * x", "sources": ["x"]} for n in (1, 2, 3)]
    parse = lambda doc: cache.parse(doc, REGISTRY, DEFAULT_LIMITS)  # noqa: E731
    parse(docs[0])
    parse(docs[1])
    parse(docs[0])  # a hit: docs[0] is now the most recently used
    parse(docs[2])  # over capacity: docs[1], the least recently used, goes
    assert (cache.hits, cache.misses, len(cache._entries)) == (1, 3, 2)
    parse(docs[0])
    parse(docs[1])
    assert (cache.hits, cache.misses) == (2, 4)
