"""Read a gradient request document into a checked, ordered graph, without TensorFlow.

`parse_request` collects every error it can find, each with a JSON Pointer, and raises them
together; what it returns is safe to run: known ops, valid attrs, a topological order, and
static shapes and sizes within the limits for every tensor the graph will make.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .cost import estimate
from .errors import ErrorCollector, FieldError, GraphError, pointer, short_repr
from .expression import parse_expression
from .graph import (
    ENCODINGS,
    FIELDS,
    MODES,
    NAME_RE,
    OP_FIELDS,
    REF_RE,
    SCALAR,
    UNCONNECTED,
    GradientRequest,
    Input,
    Literal,
    Node,
    Ref,
)
from .inference import infer_shapes, topological_order
from .limits import DEFAULT_LIMITS, Limits
from .modes import mode_fields, parse_sources, parse_targets
from .ops import REGISTRY
from .opspec import AttrError, OpSpec, TensorInfo
from .protocol import DEVICES
from .registry import Registry, UnknownOp
from .tensors import NONFINITE, TensorSpec, parse_tensor

# The request's vocabulary and graph types live in .graph; they are importable from here too.
__all__ = [
    "DEVICES",
    "ENCODINGS",
    "FIELDS",
    "MODES",
    "OP_FIELDS",
    "UNCONNECTED",
    "GradientRequest",
    "Literal",
    "Node",
    "Ref",
    "mode_fields",
    "parse_batch",
    "parse_request",
    "parse_tensors",
]


def parse_request(
    doc: Any,
    registry: Registry = REGISTRY,
    limits: Limits = DEFAULT_LIMITS,
    *,
    check_values: bool = True,
) -> GradientRequest:
    """Check a request document and return it as a GradientRequest, or raise GraphError.

    `check_values=False` skips the walk over every tensor element (for documents the API
    has already checked); structure, names, shapes, sizes and limits are always checked.
    """
    errors = ErrorCollector()
    if not isinstance(doc, dict):
        raise GraphError(FieldError("", "the request must be a JSON object"))
    for key in doc:
        if key not in FIELDS:
            errors.add(pointer(key), f"unknown field; the request has {', '.join(sorted(FIELDS))}")

    mode = _choice(doc, "mode", MODES, "gradient", errors)
    unconnected = _choice(doc, "unconnected_gradients", UNCONNECTED, "none", errors)
    device = _choice(doc, "device", DEVICES, "any", errors)
    encoding = _choice(doc, "encoding", ENCODINGS, "json", errors)
    order = _order(doc, mode, limits, errors)

    tensors = parse_tensors(doc.get("tensors"), errors, limits, check_values)
    op_docs, op_paths, positions, expr_target = _op_documents(doc, tensors, registry, limits, errors)
    # Names declared but refused (a tensor with a bad value, an op with a bad attr) have their
    # own errors; the ops and sources that use them are not "unknown names" too.
    declared_ids = {op["id"] for op in op_docs if isinstance(op, dict) and isinstance(op.get("id"), str)}
    declared_tensors = set(doc["tensors"]) if isinstance(doc.get("tensors"), dict) else set()
    declared_ids |= declared_tensors
    nodes = _nodes(op_docs, op_paths, positions, tensors, registry, limits, errors)
    ordered = topological_order(nodes, op_paths, errors)
    graph_path = "/expression" if "expression" in doc else "/ops"
    raw_sources = doc.get("sources")
    source_names = {s for s in raw_sources if isinstance(s, str)} if isinstance(raw_sources, list) else set()
    infos, tally = infer_shapes(ordered, tensors, declared_ids, limits, errors, graph_path, source_names)

    targets, is_list = parse_targets(doc, expr_target, tensors, nodes, declared_ids, infos, errors)
    sources = parse_sources(doc.get("sources"), tensors, nodes, declared_tensors, limits, errors)
    request = GradientRequest(
        tensors=tensors,
        nodes=ordered,
        targets=targets,
        target_is_list=is_list,
        sources=sources,
        mode=mode,
        order=order,
        unconnected=unconnected,
        device=device,
        encoding=encoding,
        infos=infos,
        expression="expression" in doc,
    )
    mode_fields(doc, request, limits, errors)
    if not errors:
        request.cost = estimate(request, tally, limits, errors)
    errors.raise_if_any()
    return request


BATCH_FIELDS = ("device", "graphs")


def parse_batch(doc: Any) -> tuple[list[Any], str]:
    """Check a batch's envelope and return its graphs (each still unchecked) and its device.

    Each graph is checked on its own by `parse_request`, so that one invalid graph does not
    sink the batch.
    """
    errors = ErrorCollector()
    if not isinstance(doc, dict):
        raise GraphError(FieldError("", "the request must be a JSON object"))
    for key in doc:
        if key not in BATCH_FIELDS:
            errors.add(pointer(key), f"unknown field; a batch has {', '.join(BATCH_FIELDS)}")
    graphs = doc.get("graphs")
    if graphs is None:
        errors.add("/graphs", "is required: a non-empty list of graphs")
    elif not isinstance(graphs, list) or not graphs:
        errors.add("/graphs", f"must be a non-empty list of graphs, not {short_repr(graphs)}")
    else:
        # Any other item that is not a graph gets its problem in its slot; null sinks the batch,
        # as the contract says.
        for i, graph in enumerate(graphs):
            if graph is None:
                errors.add(pointer("graphs", i), "must be a graph (an object), not null")
    device = _choice(doc, "device", DEVICES, "any", errors)
    errors.raise_if_any()
    return graphs if isinstance(graphs, list) else [], device


def _choice(doc: Mapping[str, Any], key: str, choices: tuple[str, ...], default: str, errors: ErrorCollector) -> str:
    value = doc.get(key, default)
    if value not in choices:
        errors.add(pointer(key), f"must be one of {', '.join(choices)}, not {short_repr(value)}")
        return default
    return str(value)


def _order(doc: Mapping[str, Any], mode: str, limits: Limits, errors: ErrorCollector) -> int:
    order = doc.get("order", 1)
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        errors.add("/order", f"must be an integer of at least 1, not {short_repr(order)}")
        return 1
    if order > limits.max_order:
        errors.limit("/order", f"{order} is over the limit max_order = {limits.max_order}")
        return 1
    if order != 1 and mode != "gradient":
        errors.add("/order", f"applies to gradient mode only (use hessian for second derivatives in {mode})")
    return order


def parse_tensors(raw: Any, errors: ErrorCollector, limits: Limits, check_values: bool) -> dict[str, TensorSpec]:
    if raw is None:
        errors.add("/tensors", "is required: an object of name -> tensor")
        return {}
    if not isinstance(raw, dict):
        errors.add("/tensors", "must be an object of name -> tensor")
        return {}
    if len(raw) > limits.max_tensors:
        errors.limit("/tensors", f"{len(raw)} tensors is over the limit max_tensors = {limits.max_tensors}")
        return {}
    out: dict[str, TensorSpec] = {}
    for name, value in raw.items():
        path = pointer("tensors", name)
        if not NAME_RE.match(name):
            errors.add(path, f"name {short_repr(name)} must match {NAME_RE.pattern}")
            continue
        spec = parse_tensor(value, path, errors, limits, check_values=check_values)
        if spec is not None:
            out[name] = spec
    return out


def _op_documents(
    doc: Mapping[str, Any],
    tensors: Mapping[str, TensorSpec],
    registry: Registry,
    limits: Limits,
    errors: ErrorCollector,
) -> tuple[list[Any], list[str], list[int | None], str | None]:
    """Return the op documents, where each one's errors point, and the expression's target."""
    if "expression" in doc:
        for key in ("ops", "target"):
            if key in doc:
                errors.add(pointer(key), "give either 'expression' or 'ops' with 'target', not both")
        try:
            parsed = parse_expression(doc["expression"], registry, limits, reserved=set(tensors))
        except GraphError as exc:
            errors.absorb(exc)
            return [], [], [], None
        return parsed.ops, ["/expression"] * len(parsed.ops), list(parsed.positions), parsed.target
    ops = doc.get("ops", [])
    if not isinstance(ops, list):
        errors.add("/ops", "must be a list of ops")
        return [], [], [], None
    if len(ops) > limits.max_ops:
        errors.limit("/ops", f"{len(ops)} ops is over the limit max_ops = {limits.max_ops}")
        return [], [], [], None
    return ops, [pointer("ops", i) for i in range(len(ops))], [None] * len(ops), None


def _nodes(
    op_docs: list[Any],
    paths: list[str],
    positions: list[int | None],
    tensors: Mapping[str, TensorSpec],
    registry: Registry,
    limits: Limits,
    errors: ErrorCollector,
) -> list[Node]:
    nodes: list[Node] = []
    seen: set[str] = set(tensors)
    for i, op in enumerate(op_docs):
        path, pos = paths[i], positions[i]
        in_expr = pos is not None

        def at(*parts: str | int, _path: str = path, _in_expr: bool = in_expr) -> str:
            return _path if _in_expr else _path + pointer(*parts)

        def add(where: str, message: str, _pos: int | None = pos) -> None:
            errors.add(where, message, _pos)

        if not isinstance(op, dict):
            add(path, "an op must be an object with id, op, inputs and attrs")
            continue
        for key in op:
            if key not in OP_FIELDS:
                add(at(key), "unknown field; an op has id, op, inputs and attrs")
        op_id = op.get("id")
        if not isinstance(op_id, str) or not NAME_RE.match(op_id):
            add(at("id"), f"must be a name matching {NAME_RE.pattern}, not {short_repr(op_id)}")
            continue
        if op_id in seen:
            what = "a tensor" if op_id in tensors else "another op"
            add(at("id"), f"'{op_id}' is already the name of {what}: names and op ids share one namespace")
            continue
        seen.add(op_id)
        name = op.get("op")
        if not isinstance(name, str):
            add(at("op"), "must be the name of a registered op")
            continue
        try:
            spec = registry.resolve(name)
        except UnknownOp as exc:
            add(at("op"), str(exc))
            continue
        inputs = _inputs(op.get("inputs", []), spec, limits, at, add)
        attrs = _attrs(op.get("attrs", {}) or {}, spec, at, add)
        if inputs is None or attrs is None:
            continue
        nodes.append(Node(op_id, spec, inputs, attrs, path, pos))
    return nodes


def _inputs(raw: Any, spec: OpSpec, limits: Limits, at: Any, add: Any) -> list[Input] | None:
    if not isinstance(raw, list):
        add(at("inputs"), "must be a list of names or literals")
        return None
    lo = spec.min_inputs if spec.variadic else len(spec.inputs) - spec.optional_inputs
    hi = math.inf if spec.variadic else len(spec.inputs)
    if not lo <= len(raw) <= hi:
        add(at("inputs"), f"'{spec.name}' takes {spec.arity_text()}, got {len(raw)}")
        return None
    out: list[Input] = []
    ok = True
    for k, item in enumerate(raw):
        if isinstance(item, str) and item not in NONFINITE:
            m = REF_RE.match(item)
            if not m:
                add(at("inputs", k), f"{short_repr(item)} is not a name or 'id:k' reference")
                ok = False
                continue
            out.append(Ref(m.group(1), int(m.group(2) or 0)))
        elif isinstance(item, bool) or item is None or isinstance(item, dict):
            add(at("inputs", k), "must be a name, an 'id:k' reference, or a number or nested list of numbers")
            ok = False
        elif k in spec.int_inputs:
            # Index inputs (gather's indices, one_hot's, sparse labels) become int32 literals.
            errs = ErrorCollector()
            lit = parse_tensor({"value": item, "dtype": "int32"}, at("inputs", k), errs, limits)
            if lit is None:
                add(at("inputs", k), f"'{spec.inputs[k]}' takes integer indices (int32), not {short_repr(item)}")
                ok = False
                continue
            out.append(Literal(item, TensorInfo(lit.shape, "int32")))
        elif type(item) is float or type(item) is int:
            out.append(Literal(item, SCALAR))  # the common case: a plain number
        else:
            # Literal shapes and elements are checked like tensors; dtype is fixed in _infer.
            errs = ErrorCollector()
            lit = parse_tensor(item, at("inputs", k), errs, limits)
            if lit is None:
                for e in errs.errors + errs.limit_errors:
                    add(e.path, e.message)
                ok = False
                continue
            out.append(Literal(item, TensorInfo(lit.shape, "float32")))
    return out if ok else None


def _attrs(raw: Any, spec: OpSpec, at: Any, add: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        add(at("attrs"), "must be an object of attr name -> value")
        return None
    out: dict[str, Any] = {}
    ok = True
    for name, value in raw.items():
        attr = spec.attr(name)
        if attr is None:
            known = ", ".join(a.name for a in spec.attrs) or "none"
            add(at("attrs", name), f"'{spec.name}' has no attr '{name}' (its attrs: {known})")
            ok = False
            continue
        try:
            out[name] = attr.check(value)
        except AttrError as exc:
            add(at("attrs", name), f"{name} {exc}")
            ok = False
    for attr in spec.attrs:
        if attr.name not in out:
            if attr.required:
                if attr.name not in raw:
                    add(at("attrs"), f"'{spec.name}' needs attr '{attr.name}' ({attr.describe_type()})")
                    ok = False
            else:
                out[attr.name] = attr.default
    return out if ok else None
