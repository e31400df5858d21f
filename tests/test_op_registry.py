"""Every registry op, checked from the registry itself.

For each op and each of its examples: the static shape rule agrees with what TensorFlow
produces; the registry's function gives what the direct TF call gives; and its gradient
(a vector-Jacobian product in a random direction) agrees with central finite differences
in float64. An op without an example fails here, so none can be added unchecked.
"""

from __future__ import annotations

import functools
import zlib
from typing import Any

import numpy as np
import pytest

from tapecore.ops import REGISTRY
from tapecore.opspec import Example, OpSpec, Sample, TensorInfo

tf = pytest.importorskip("tensorflow")

FD_STEP = 1e-6  # central differences in float64: error ~ h^2 * f''' + eps / h


def _np_dtype(dtype: str) -> Any:
    return tf.as_dtype(dtype).as_numpy_dtype


def make_input(sample: Sample, rng: np.random.Generator) -> np.ndarray:
    """Build the deterministic array an example's sample describes."""
    if sample.value is not None:
        return np.asarray(sample.value, dtype=_np_dtype(sample.dtype))
    if sample.dtype == "bool":
        return rng.random(sample.shape) < 0.5
    if sample.dtype.startswith("int"):
        return rng.integers(int(sample.low), int(sample.high), sample.shape).astype(_np_dtype(sample.dtype))
    return rng.uniform(sample.low, sample.high, sample.shape).astype(_np_dtype(sample.dtype))


def direct_tf(name: str) -> Any:
    """Resolve TensorFlow's own function by its public name: the oracle the tests hold to."""
    return functools.reduce(getattr, name.split("."), tf)


# Ops whose TF signature is not `f(*inputs, **attrs)`: the hand-written call, for the oracle.
DIRECT_CALLS: dict[str, Any] = {
    "add_n": lambda xs, **a: tf.add_n(list(xs), **a),
    "concat": lambda xs, **a: tf.concat(list(xs), **a),
    "stack": lambda xs, **a: tf.stack(list(xs), **a),
    "einsum": lambda xs, equation: tf.einsum(equation, *xs),
    # offset and scale are optional inputs; TF takes None for them, positionally.
    "nn.batch_normalization": lambda xs, **a: tf.nn.batch_normalization(*xs, *[None] * (5 - len(xs)), **a),
}


def cases() -> list[Any]:
    out = []
    for spec in REGISTRY:
        for i, example in enumerate(spec.examples):
            out.append(pytest.param(spec, example, id=f"{spec.name}[{i}]"))
    return out


def call(spec: OpSpec, xs: list[Any], attrs: dict[str, Any]) -> list[Any]:
    result = spec.fn(tf, *xs, **attrs)
    return list(result) if isinstance(result, list | tuple) else [result]


def call_direct(spec: OpSpec, xs: list[Any], attrs: dict[str, Any]) -> list[Any]:
    if spec.name in DIRECT_CALLS:
        result = DIRECT_CALLS[spec.name](xs, **attrs)
    elif spec.variadic:
        result = direct_tf(spec.tf_name or spec.name)(list(xs), **attrs)
    else:
        result = direct_tf(spec.tf_name or spec.name)(*xs, **attrs)
    return list(result) if isinstance(result, list | tuple) else [result]


@pytest.mark.parametrize("spec", list(REGISTRY), ids=lambda s: s.name)
def test_every_op_has_an_example(spec: OpSpec) -> None:
    assert spec.examples, f"{spec.name} has no example: add one so that it is checked"
    assert spec.doc and len(spec.doc.splitlines()) == 1
    assert spec.category


@pytest.mark.parametrize(("spec", "example"), cases())
def test_op_matches_tensorflow(spec: OpSpec, example: Example) -> None:
    rng = np.random.default_rng(zlib.crc32(spec.name.encode()))
    arrays = [make_input(s, rng) for s in example.inputs]
    attrs = dict(example.attrs)
    xs = [tf.constant(a) for a in arrays]

    # The static shape rule agrees with TensorFlow.
    infos = [TensorInfo(tuple(a.shape), s.dtype) for a, s in zip(arrays, example.inputs, strict=True)]
    checked_attrs = {a.name: a.check(attrs[a.name]) if a.name in attrs else a.default for a in spec.attrs}
    inferred = list(spec.infer(infos, checked_attrs))
    outs = call(spec, xs, attrs)
    assert [(tuple(o.shape), o.dtype.name) for o in outs] == [(i.shape, i.dtype) for i in inferred]

    # The registry's function is the direct TF call.
    for got, want in zip(outs, call_direct(spec, xs, attrs), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=0)

    float_outs = [i for i, o in enumerate(outs) if o.dtype.is_floating]
    grad_inputs = [i for i, a in enumerate(arrays) if a.dtype.kind == "f" and i not in example.skip_grad]
    if not float_outs or not grad_inputs:
        return
    weights = [rng.standard_normal(tuple(outs[i].shape)) for i in float_outs]

    def objective(values: list[Any]) -> Any:
        ys = call(spec, values, attrs)
        return tf.add_n([tf.reduce_sum(ys[i] * w) for i, w in zip(float_outs, weights, strict=True)])

    with tf.GradientTape() as tape:
        tape.watch(xs)
        y = objective(xs)
    grads = tape.gradient(y, [xs[i] for i in grad_inputs])

    if not spec.differentiable:
        for g in grads:
            assert g is None or not np.any(np.asarray(g)), f"{spec.name} should have no gradient"
        return

    for i, g in zip(grad_inputs, grads, strict=True):
        assert g is not None, f"{spec.name}: no gradient for input {i}"
        g = np.asarray(tf.convert_to_tensor(g))
        base = arrays[i]
        fd = np.zeros_like(base)
        for j in np.ndindex(base.shape):
            plus, minus = base.copy(), base.copy()
            plus[j] += FD_STEP
            minus[j] -= FD_STEP
            vals_p = [tf.constant(plus) if k == i else xs[k] for k in range(len(xs))]
            vals_m = [tf.constant(minus) if k == i else xs[k] for k in range(len(xs))]
            fd[j] = (float(objective(vals_p)) - float(objective(vals_m))) / (2 * FD_STEP)
        np.testing.assert_allclose(g, fd, rtol=example.tolerance * 100, atol=example.tolerance * 10)


@pytest.mark.parametrize("spec", list(REGISTRY), ids=lambda s: s.name)
def test_names_and_aliases_are_tensorflows_own(spec: OpSpec) -> None:
    """Every name and alias is TensorFlow's public name for the same function."""
    want = direct_tf(spec.tf_name or spec.name)
    for alias in spec.aliases:
        assert (
            direct_tf(alias) is want
            or getattr(direct_tf(alias), "__wrapped__", None) is want
            or (getattr(want, "__wrapped__", None) is getattr(direct_tf(alias), "__wrapped__", 0))
        ), f"tf.{alias} is not tf.{spec.name}"
