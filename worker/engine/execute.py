"""Build a checked graph inside `tf.GradientTape` and ask the tape what the request asks.

`compute` is one function of the request's input tensors (and its output gradients or
tangents), so that it can be traced with `tf.function` and reused for every request of the
same structure, shapes and dtypes.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.python.autograph.impl.api import StagingError

from tapecore.errors import ExecutionError, FieldError, MemoryLimitExceeded
from tapecore.graph import GradientRequest, Literal, Node, Ref

from .cache import FUNCTIONS, CompiledFunctions, structure_key
from .codec import count_nonfinite, decode_tensor, decode_value, encode_array

UNCONNECTED = {"none": tf.UnconnectedGradients.NONE, "zero": tf.UnconnectedGradients.ZERO}
RESULT_KEY = {
    "gradient": "gradients",
    "jacobian": "jacobians",
    "batch_jacobian": "jacobians",
    "hessian": "hessians",
}

# TF's messages carry the kernel's internal name and the op type; the op id says more.
_TF_NOISE = re.compile(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:[^\]]*\](\s*name:\s*\S*)?")

Results = tuple[list[tf.Tensor], list[tf.Tensor | None]]

# What TensorFlow raises when it cannot run or differentiate a graph it was allowed to build.
# StagingError comes from tracing (tape.jacobian's pfor, tf.function); it has no public name.
TF_FAILURES = (LookupError, tf.errors.OpError, ValueError, TypeError, NotImplementedError, StagingError)
# What an allocation refused under the TF process's memory cap (RLIMIT_DATA) raises: the job's
# own problem, never an op's error, and never retried eagerly.
OUT_OF_MEMORY = (tf.errors.ResourceExhaustedError, MemoryError)


def input_arrays(req: GradientRequest) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Decode the request's tensors, then its output gradients or tangents (in source order)."""
    inputs = [decode_tensor(spec) for spec in req.tensors.values()]
    if req.output_gradients:
        extra = [decode_tensor(spec) for spec in req.output_gradients]
    elif req.tangents:
        extra = [decode_tensor(req.tangents[s]) for s in req.sources]
    else:
        extra = []
    return inputs, extra


def make_compute(req: GradientRequest) -> Callable[[Sequence[tf.Tensor], Sequence[tf.Tensor]], Results]:
    """Return the function of the input tensors that runs the graph and the request's mode."""
    req = req.without_values()  # the traced function is cached: it must not hold this request's arrays
    names = list(req.tensors)
    source_index = [names.index(s) for s in req.sources]
    unconnected = UNCONNECTED[req.unconnected]

    def forward(inputs: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        env: dict[Ref, tf.Tensor] = {Ref(n): t for n, t in zip(names, inputs, strict=True)}
        for node in req.nodes:
            run_node(node, env)
        return [env[r] for r in req.targets]

    def compute(inputs: Sequence[tf.Tensor], extra: Sequence[tf.Tensor]) -> Results:
        sources = [inputs[i] for i in source_index]
        if req.mode == "gradient":
            targets, grads = _nth_gradient(forward, inputs, sources, list(extra) or None, req.order)
            if req.unconnected == "zero":
                grads = [tf.zeros_like(s) if g is None else g for g, s in zip(grads, sources, strict=True)]
            return targets, grads
        if req.mode == "jvp":
            with tf.autodiff.ForwardAccumulator(sources, list(extra)) as acc:
                targets = forward(inputs)
            return targets, [acc.jvp(targets[0], unconnected_gradients=unconnected)]
        if req.mode == "hessian":
            with tf.GradientTape(persistent=True) as outer:
                outer.watch(sources)
                with tf.GradientTape() as inner:
                    inner.watch(sources)
                    targets = forward(inputs)
                grads = inner.gradient(targets[0], sources)
            out = []
            for g, s in zip(grads, sources, strict=True):
                h = None if g is None else outer.jacobian(g, s, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                if h is None and req.unconnected == "zero":
                    h = tf.zeros(tf.concat([tf.shape(s), tf.shape(s)], 0), s.dtype)
                out.append(h)
            return targets, out
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(sources)
            targets = forward(inputs)
        if req.mode == "jacobian":
            return targets, list(tape.jacobian(targets[0], sources, unconnected_gradients=unconnected))
        return targets, [tape.batch_jacobian(targets[0], s, unconnected_gradients=unconnected) for s in sources]

    return compute


def _nth_gradient(
    forward: Callable[[Sequence[tf.Tensor]], list[tf.Tensor]],
    inputs: Sequence[tf.Tensor],
    sources: list[tf.Tensor],
    output_gradients: list[tf.Tensor] | None,
    order: int,
) -> Results:
    """Differentiate by `order` nested tapes; each level differentiates the sum of the one below.

    A source that is connected at order 1 but whose higher derivative TF reports as None (the
    lower gradient does not depend on it) gets zeros: the derivative exists and is zero.
    """
    with tf.GradientTape() as tape:
        tape.watch(sources)
        if order == 1:
            targets = forward(inputs)
            ys: list[tf.Tensor] = targets
            connected = [True] * len(sources)
        else:
            targets, lower = _nth_gradient(forward, inputs, sources, output_gradients, order - 1)
            ys = [g for g in lower if g is not None]
            connected = [g is not None for g in lower]
    if not ys:
        return targets, [None] * len(sources)
    grads = tape.gradient(ys, sources, output_gradients=output_gradients if order == 1 else None)
    if order > 1:
        grads = [tf.zeros_like(s) if g is None and c else g for g, s, c in zip(grads, sources, connected, strict=True)]
    return targets, [tf.convert_to_tensor(g) if g is not None else None for g in grads]


def run_node(node: Node, env: dict[Ref, tf.Tensor]) -> None:
    """Run one op on its inputs from `env`, adding its outputs to `env`."""
    args = [
        tf.constant(decode_value(item.value, item.info.dtype)) if isinstance(item, Literal) else env[item]
        for item in node.inputs
    ]
    try:
        out = node.spec.fn(tf, *args, **node.attrs)
    except OUT_OF_MEMORY:
        raise
    except (tf.errors.OpError, ValueError, TypeError) as exc:
        raise op_failed(node, exc) from None
    outs = list(out) if isinstance(out, list | tuple) else [out]
    for k, t in enumerate(outs):
        env[Ref(node.id, k)] = t


def op_failed(node: Node, exc: Exception) -> ExecutionError:
    """Translate TensorFlow's complaint about one op into an error naming that op."""
    message = tf_message(exc)
    return ExecutionError(FieldError(node.path, f"op '{node.id}' ({node.spec.name}) failed: {message}", node.position))


def tf_message(exc: BaseException) -> str:
    """The first line of TensorFlow's message, without its kernel and op-type noise."""
    message = exc.message if isinstance(exc, tf.errors.OpError) else str(exc)
    return (_TF_NOISE.sub("", message).strip().splitlines() or [type(exc).__name__])[0]


def run_request(
    req: GradientRequest, device: str | None = None, cache: CompiledFunctions | None = FUNCTIONS
) -> dict[str, Any]:
    """Run a checked request (compiled if its structure was seen before) and return its result."""
    try:
        inputs, extra = input_arrays(req)
        with tf.device(device) if device else contextlib.nullcontext():
            tensors = [tf.constant(a) for a in inputs]
            extras = [tf.constant(a) for a in extra]
            if cache is None:
                targets, results = _run_eagerly(req, tensors, extras)
            else:
                targets, results = _run_cached(req, tensors, extras, device or "", cache)
        return encode_result(req, targets, results)
    except OUT_OF_MEMORY as exc:
        why = tf_message(exc).rstrip(": ") or type(exc).__name__
        raise MemoryLimitExceeded(FieldError("", f"TensorFlow could not allocate memory ({why})")) from None


def _run_cached(
    req: GradientRequest, tensors: list[tf.Tensor], extras: list[tf.Tensor], device: str, cache: CompiledFunctions
) -> Results:
    key = structure_key(req, device)
    fn = cache.get(key)
    if fn is None and cache.should_compile(key):
        try:
            fn = CompiledGraph(make_compute(req), tensors, extras)
        except OUT_OF_MEMORY:
            raise
        except TF_FAILURES:
            fn = None  # tracing failed; the eager run below says why, or succeeds
            cache.mark_eager_only(key)
        else:
            cache.put(key, fn)
    if fn is None:
        return _run_eagerly(req, tensors, extras)
    try:
        return fn(tensors, extras)
    except OUT_OF_MEMORY:
        raise
    except TF_FAILURES:
        # A traced graph's error does not say which op failed; the eager run does, or it
        # succeeds (some gradients exist only eagerly: SVD's with unknown inner shapes), and
        # this structure is run eagerly from then on.
        outcome = _run_eagerly(req, tensors, extras)
        cache.mark_eager_only(key)
        return outcome


class CompiledGraph:
    """A request's `compute`, traced once for its shapes and dtypes and called on flat tensors.

    The traced graph runs as one `PartitionedCall` op, as graph-mode TensorFlow calls a
    function, not through `tf.function`'s per-call work (binding arguments, looking the
    signature up, packing outputs) nor eager's function call, which hands the graph's
    kernels to the inter-op thread pool. Measured per call (the results are bitwise the
    same): the contract's example 3, 100 us as the concrete function's graph, 18 us as one
    op; the MLP, 290 us and 155 us. A None result (an unconnected source) is not a tensor;
    tracing records where they are.
    """

    def __init__(self, compute: Callable[..., Results], tensors: list[tf.Tensor], extras: list[tf.Tensor]):
        n_inputs = len(tensors)
        layout: list[Any] = []  # set while tracing: the number of targets, then which results exist

        def flat(*args: tf.Tensor) -> list[tf.Tensor]:
            targets, results = compute(args[:n_inputs], args[n_inputs:])
            layout[:] = [len(targets), [r is not None for r in results]]
            return [*targets, *(tf.convert_to_tensor(r) for r in results if r is not None)]

        signature = [tf.TensorSpec(t.shape, t.dtype) for t in [*tensors, *extras]]
        concrete = tf.function(flat, input_signature=signature, autograph=False).get_concrete_function()
        self.n_targets, self.present = layout
        # The graph with no Python around it is a private attribute of TF's, hence the
        # fallback to the public (slower) call should a TF release move it; with captured
        # tensors (none are expected: constants are built inside) the public call passes them.
        graph: Any = getattr(concrete, "_inference_function", None)
        self.as_op = not concrete.captured_inputs and hasattr(graph, "function_type") and hasattr(graph, "call_options")
        self._call: Callable[..., Sequence[tf.Tensor]] = concrete
        if self.as_op:
            op = tf.raw_ops.StatefulPartitionedCall if graph.call_options.is_stateful else tf.raw_ops.PartitionedCall
            tout = [output.dtype for output in graph.function_type.flat_outputs]
            self._call = lambda *args: op(args=list(args), Tout=tout, f=graph)

    def __call__(self, tensors: Sequence[tf.Tensor], extras: Sequence[tf.Tensor]) -> Results:
        out = list(self._call(*tensors, *extras))
        targets, rest = out[: self.n_targets], iter(out[self.n_targets :])
        return targets, [next(rest) if present else None for present in self.present]


def _run_eagerly(req: GradientRequest, tensors: list[tf.Tensor], extras: list[tf.Tensor]) -> Results:
    try:
        return make_compute(req)(tensors, extras)
    except (ExecutionError, *OUT_OF_MEMORY):
        raise
    except TF_FAILURES as exc:
        if isinstance(exc, StagingError) and isinstance(exc.__cause__, OUT_OF_MEMORY):
            raise exc.__cause__ from None
        # tape.jacobian traces through pfor: a missing gradient arrives as a StagingError.
        cause = exc.__cause__ if isinstance(exc, StagingError) and exc.__cause__ is not None else exc
        message = tf_message(cause)
        raise ExecutionError(FieldError("/target", f"TensorFlow could not differentiate: {message}")) from None


def encode_result(req: GradientRequest, targets: Sequence[tf.Tensor], results: Sequence[Any]) -> dict[str, Any]:
    """Turn the tape's answers into the result document, with notes on what TF left silent."""
    notes: list[str] = []
    device = targets[0].device if targets and hasattr(targets[0], "device") else ""
    encoded_targets = []
    for ref, t in zip(req.targets, targets, strict=True):
        array = _numpy(t)
        encoded_targets.append(encode_array(array, req.info(ref).dtype, req.encoding))
        _note_nonfinite(array, f"the target '{ref}'", notes)
    result: dict[str, Any] = {
        "target": encoded_targets if req.target_is_list else encoded_targets[0],
    }
    if req.mode == "jvp":
        if results[0] is None:
            result["jvp"] = None
            notes.append(
                'no source is connected to the target: the jvp is null (set unconnected_gradients to "zero" for zeros)'
            )
        else:
            array = _numpy(results[0])
            result["jvp"] = encode_array(array, req.info(req.targets[0]).dtype, req.encoding)
            _note_nonfinite(array, "the jvp", notes)
    else:
        entries: dict[str, Any] = {}
        for name, value in zip(req.sources, results, strict=True):
            if value is None:
                entries[name] = None
                notes.append(
                    f"source '{name}' is not connected to the target: its entry is null "
                    '(set unconnected_gradients to "zero" for zeros)'
                )
                continue
            array = _numpy(tf.convert_to_tensor(value))
            entries[name] = encode_array(array, req.tensors[name].dtype, req.encoding)
            _note_nonfinite(array, f"the {req.mode} for '{name}'", notes)
        result[RESULT_KEY[req.mode]] = entries
    result["device"] = device
    if notes:
        result["notes"] = notes
    return result


def _numpy(t: Any) -> np.ndarray:
    """The value of a tensor as an array (np.asarray fails on a scalar bfloat16 tensor)."""
    return np.asarray(t.numpy()) if hasattr(t, "numpy") else np.asarray(t)


def _note_nonfinite(array: np.ndarray, what: str, notes: list[str]) -> None:
    n = count_nonfinite(array)
    if n:
        notes.append(f'{what} has {n} non-finite value(s), written as "NaN", "Infinity" or "-Infinity"')
