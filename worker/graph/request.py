"""Read a gradient request document into a checked, ordered graph, without TensorFlow.

`parse_request` collects every error it can find, each with a JSON Pointer, and raises them
together; what it returns is safe to run: known ops, valid attrs, a topological order, and
static shapes and sizes within the limits for every tensor the graph will make.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .dtypes import FLOAT_DTYPES, is_float
from .errors import ErrorCollector, FieldError, GraphError, pointer, short_repr
from .expression import parse_expression
from .limits import DEFAULT_LIMITS, Limits
from .ops import REGISTRY
from .opspec import AttrError, OpSpec, ShapeError, TensorInfo
from .registry import Registry, UnknownOp
from .tensors import NONFINITE, TensorSpec, parse_tensor

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
REF_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]{0,63})(?::([0-9]{1,4}))?$")

MODES = ("gradient", "jacobian", "batch_jacobian", "hessian", "jvp")
UNCONNECTED = ("none", "zero")
DEVICES = ("any", "cpu", "gpu")
ENCODINGS = ("json", "b64")
FIELDS = frozenset(
    {
        "tensors",
        "ops",
        "expression",
        "target",
        "sources",
        "mode",
        "order",
        "output_gradients",
        "tangents",
        "unconnected_gradients",
        "device",
        "encoding",
    }
)
OP_FIELDS = frozenset({"id", "op", "inputs", "attrs"})
SCALAR = TensorInfo((), "float32")


@dataclass(frozen=True)
class Ref:
    """A reference to a named tensor or to output `output` of an op."""

    name: str
    output: int = 0

    def __str__(self) -> str:
        return f"{self.name}:{self.output}" if self.output else self.name


@dataclass(frozen=True)
class Literal:
    """An inline constant input: a number or nested list, with the dtype it will have."""

    value: Any
    info: TensorInfo


Input = Ref | Literal


@dataclass
class Node:
    """One op of the graph, checked, with its static output shapes."""

    id: str
    spec: OpSpec
    inputs: list[Input]
    attrs: dict[str, Any]
    path: str  # where errors about this op point: /ops/3, or /expression
    position: int | None = None  # character offset, for ops written in `expression`
    outputs: list[TensorInfo] = field(default_factory=list)


@dataclass
class GradientRequest:
    """A checked request: tensors, ops in execution order, and what to compute."""

    tensors: dict[str, TensorSpec]
    nodes: list[Node]
    targets: list[Ref]
    target_is_list: bool
    sources: list[str]
    mode: str = "gradient"
    order: int = 1
    output_gradients: list[TensorSpec] | None = None
    tangents: dict[str, TensorSpec] | None = None
    unconnected: str = "none"
    device: str = "any"
    encoding: str = "json"
    infos: dict[Ref, TensorInfo] = field(default_factory=dict)

    def info(self, ref: Ref) -> TensorInfo:
        return self.infos[ref]


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
    nodes = _nodes(op_docs, op_paths, positions, tensors, registry, errors)
    ordered = _topological_order(nodes, op_paths, errors)
    infos = _infer(ordered, tensors, declared_ids, limits, errors)

    targets, is_list = _targets(doc, expr_target, tensors, nodes, declared_ids, infos, errors)
    sources = _sources(doc.get("sources"), tensors, nodes, declared_tensors, limits, errors)
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
    )
    mode_fields(doc, request, limits, errors)
    errors.raise_if_any()
    return request


def _choice(doc: Mapping[str, Any], key: str, choices: tuple[str, ...], default: str, errors: ErrorCollector) -> str:
    value = doc.get(key, default)
    if value not in choices:
        errors.add(pointer(key), f"must be one of {', '.join(choices)}, not {_short(value)}")
        return default
    return str(value)


def _order(doc: Mapping[str, Any], mode: str, limits: Limits, errors: ErrorCollector) -> int:
    order = doc.get("order", 1)
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        errors.add("/order", f"must be an integer of at least 1, not {_short(order)}")
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
            errors.add(path, f"name {_short(name)} must match {NAME_RE.pattern}")
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
            add(at("id"), f"must be a name matching {NAME_RE.pattern}, not {_short(op_id)}")
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
        inputs = _inputs(op.get("inputs", []), spec, at, add)
        attrs = _attrs(op.get("attrs", {}) or {}, spec, at, add)
        if inputs is None or attrs is None:
            continue
        nodes.append(Node(op_id, spec, inputs, attrs, path, pos))
    return nodes


def _inputs(raw: Any, spec: OpSpec, at: Any, add: Any) -> list[Input] | None:
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
                add(at("inputs", k), f"{_short(item)} is not a name or 'id:k' reference")
                ok = False
                continue
            out.append(Ref(m.group(1), int(m.group(2) or 0)))
        elif isinstance(item, bool) or item is None or isinstance(item, dict):
            add(at("inputs", k), "must be a name, an 'id:k' reference, or a number or nested list of numbers")
            ok = False
        elif type(item) is float or type(item) is int:
            out.append(Literal(item, SCALAR))  # the common case: a plain number
        else:
            # Literal shapes and elements are checked like tensors; dtype is fixed in _infer.
            errs = ErrorCollector()
            lit = parse_tensor(item, at("inputs", k), errs, DEFAULT_LIMITS)
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


def _topological_order(nodes: list[Node], paths: list[str], errors: ErrorCollector) -> list[Node]:
    """Order ops so each comes after its inputs (Kahn); name any cycle with its members."""
    by_id = {n.id: n for n in nodes}
    deps = {n.id: {i.name for i in n.inputs if isinstance(i, Ref) and i.name in by_id} for n in nodes}
    users: dict[str, list[str]] = {n.id: [] for n in nodes}
    for nid, ds in deps.items():
        for d in ds:
            users[d].append(nid)
    pending = {nid: len(ds) for nid, ds in deps.items()}
    ready = [n.id for n in nodes if pending[n.id] == 0]
    order: list[Node] = []
    while ready:
        nid = ready.pop()
        order.append(by_id[nid])
        for u in users[nid]:
            pending[u] -= 1
            if pending[u] == 0:
                ready.append(u)
    if len(order) < len(nodes):
        stuck = {nid for nid, count in pending.items() if count > 0}
        cycle = _find_cycle(stuck, deps)
        first = by_id[cycle[0]]
        members = " -> ".join([*cycle, cycle[0]])
        errors.add(first.path, f"the ops form a cycle: {members}", first.position)
    return order


def _find_cycle(stuck: set[str], deps: Mapping[str, set[str]]) -> list[str]:
    start = min(stuck)
    path: list[str] = []
    seen: dict[str, int] = {}
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = min(d for d in deps[node] if d in stuck)
    return path[seen[node] :]


def _infer(
    nodes: list[Node],
    tensors: Mapping[str, TensorSpec],
    declared_ids: set[str],
    limits: Limits,
    errors: ErrorCollector,
) -> dict[Ref, TensorInfo]:
    """Compute every tensor's static shape and dtype, checking sizes against the limits."""
    infos: dict[Ref, TensorInfo] = {Ref(n): TensorInfo(t.shape, t.dtype) for n, t in tensors.items()}
    known_ids = {n.id for n in nodes} | declared_ids
    total = 0
    for node in nodes:
        ins: list[TensorInfo] = []
        ok = True
        for k, item in enumerate(node.inputs):
            if isinstance(item, Literal):
                ins.append(item.info)
                continue
            info = infos.get(item)
            if info is None:
                where = node.path if node.position is not None else node.path + pointer("inputs", k)
                if Ref(item.name) in infos or item.name in known_ids:
                    n_out = sum(1 for r in infos if r.name == item.name)
                    if n_out:
                        errors.add(
                            where,
                            f"'{item.name}' has {n_out} output(s); '{item}' does not exist",
                            node.position,
                        )
                elif item.name in tensors or item.name in known_ids:
                    pass  # its own error was reported where it was defined
                else:
                    errors.add(where, f"unknown name '{item.name}': not a tensor or an op id", node.position)
                ok = False
                continue
            ins.append(info)
        if not ok:
            continue
        ins = _literal_dtypes(node, ins)
        try:
            outs = list(node.spec.infer(ins, node.attrs))
        except ShapeError as exc:
            where = node.path
            if node.position is None:
                if exc.input is not None:
                    where += pointer("inputs", exc.input)
                elif exc.attr is not None:
                    where += pointer("attrs", exc.attr)
            errors.add(where, f"{node.spec.name}: {exc.message}", node.position)
            continue
        node.outputs = outs
        for k, out in enumerate(outs):
            if out.rank > limits.max_rank:
                errors.limit(node.path, f"output rank {out.rank} is over the limit max_rank = {limits.max_rank}")
            if out.size > limits.max_intermediate_elements:
                errors.limit(
                    node.path,
                    f"op '{node.id}' would make {out.size} elements, over the limit "
                    f"max_intermediate_elements = {limits.max_intermediate_elements}",
                )
            total += out.size
            infos[Ref(node.id, k)] = out
    if total > limits.max_total_elements:
        errors.limit(
            "/ops",
            f"the graph would hold {total} elements in all, over the limit "
            f"max_total_elements = {limits.max_total_elements}",
        )
    return infos


def _literal_dtypes(node: Node, ins: list[TensorInfo]) -> list[TensorInfo]:
    """Give inline literals the dtype hand-written TF would: the float dtype of their peers."""
    peers = [t.dtype for t, i in zip(ins, node.inputs, strict=True) if not isinstance(i, Literal)]
    float_peer = next((d for d in peers if d in FLOAT_DTYPES), "float32")
    out = []
    for k, (info, item) in enumerate(zip(ins, node.inputs, strict=True)):
        if isinstance(item, Literal):
            dtype = "int32" if k in node.spec.int_inputs else float_peer
            info = TensorInfo(info.shape, dtype)
            node.inputs[k] = Literal(item.value, info)
        out.append(info)
    return out


def _targets(
    doc: Mapping[str, Any],
    expr_target: str | None,
    tensors: Mapping[str, TensorSpec],
    nodes: list[Node],
    declared_ids: set[str],
    infos: Mapping[Ref, TensorInfo],
    errors: ErrorCollector,
) -> tuple[list[Ref], bool]:
    if "expression" in doc:
        return ([Ref(expr_target)] if expr_target and Ref(expr_target) in infos else []), False
    raw = doc.get("target")
    if raw is None:
        errors.add("/target", "is required with 'ops' (or give an 'expression')")
        return [], False
    is_list = isinstance(raw, list)
    items = raw if is_list else [raw]
    if is_list and not raw:
        errors.add("/target", "must name at least one tensor or op")
    ids = {n.id for n in nodes} | declared_ids
    out = []
    for k, item in enumerate(items):
        path = pointer("target", k) if is_list else "/target"
        m = REF_RE.match(item) if isinstance(item, str) else None
        if not m:
            errors.add(path, f"must be a tensor name, an op id or 'id:k', not {_short(item)}")
            continue
        ref = Ref(m.group(1), int(m.group(2) or 0))
        if ref not in infos:
            if ref.name not in tensors and ref.name not in ids:
                errors.add(path, f"unknown name '{ref.name}': not a tensor or an op id")
            elif ref.name in ids and any(r.name == ref.name for r in infos):
                errors.add(path, f"'{item}' is not an output of op '{ref.name}'")
            continue
        if not is_float(infos[ref].dtype):
            errors.add(path, f"the target '{item}' has dtype {infos[ref].dtype}; a target must be floating-point")
            continue
        out.append(ref)
    return out, is_list


def _sources(
    raw: Any,
    tensors: Mapping[str, TensorSpec],
    nodes: list[Node],
    declared: set[str],
    limits: Limits,
    errors: ErrorCollector,
) -> list[str]:
    if not isinstance(raw, list) or not raw or not all(isinstance(s, str) for s in raw):
        errors.add("/sources", "must be a non-empty list of tensor names")
        return []
    if len(raw) > limits.max_sources:
        errors.limit("/sources", f"{len(raw)} sources is over the limit max_sources = {limits.max_sources}")
        return []
    ids = {n.id for n in nodes}
    out = []
    for k, name in enumerate(raw):
        path = pointer("sources", k)
        if name in out:
            errors.add(path, f"'{name}' is listed twice")
        elif name in tensors:
            dtype = tensors[name].dtype
            if not is_float(dtype):
                errors.add(
                    path,
                    f"source '{name}' has dtype {dtype}: gradients exist only for floating-point values "
                    "(give it a float dtype, or cast it in the graph and differentiate the float tensor)",
                )
            else:
                out.append(name)
        elif name in ids:
            errors.add(path, f"'{name}' is an op; sources must be input tensors (from 'tensors')")
        elif name in declared:
            pass  # a tensor refused for its own reasons, reported where it is defined
        else:
            errors.add(path, f"unknown tensor '{name}'")
    return out


def mode_fields(doc: Mapping[str, Any], req: GradientRequest, limits: Limits, errors: ErrorCollector) -> None:
    """Check what each mode needs: output_gradients, tangents, one target, result sizes."""
    mode = req.mode
    if mode != "gradient" and "output_gradients" in doc:
        errors.add("/output_gradients", f"applies to gradient mode only, not {mode}")
    if mode != "jvp" and "tangents" in doc:
        errors.add("/tangents", f"applies to jvp mode only, not {mode}")
    if mode != "gradient" and req.target_is_list:
        errors.add("/target", f"{mode} mode takes one target, not a list")
    if not req.targets or not req.sources or any(t not in req.infos for t in req.targets):
        return
    if req.target_is_list and len(req.targets) != len(doc["target"]):
        return
    target_infos = [req.infos[t] for t in req.targets]
    source_infos = {s: TensorInfo(req.tensors[s].shape, req.tensors[s].dtype) for s in req.sources}

    if mode == "gradient" and "output_gradients" in doc:
        raw = doc["output_gradients"]
        if req.target_is_list:
            if not isinstance(raw, list) or len(raw) != len(req.targets):
                errors.add("/output_gradients", "must be a list with one tensor per target")
                return
            items, paths = raw, [pointer("output_gradients", k) for k in range(len(raw))]
        else:
            items, paths = [raw], ["/output_gradients"]
        specs = []
        for item, path, info in zip(items, paths, target_infos, strict=True):
            spec = parse_tensor(item, path, errors, limits, default_dtype=info.dtype)
            if spec is None:
                continue
            if spec.shape != info.shape or spec.dtype != info.dtype:
                errors.add(
                    path,
                    f"is {spec.dtype}{list(spec.shape)} but must be shaped like the target: "
                    f"{info.dtype}{list(info.shape)}",
                )
            specs.append(spec)
        req.output_gradients = specs
    if mode == "jvp":
        raw = doc.get("tangents")
        if not isinstance(raw, dict):
            errors.add("/tangents", "jvp mode needs 'tangents': an object of source name -> tensor")
            return
        tangents = {}
        for name in raw:
            if name not in source_infos:
                errors.add(pointer("tangents", name), f"'{name}' is not a source")
        for name, info in source_infos.items():
            path = pointer("tangents", name)
            if name not in raw:
                errors.add("/tangents", f"needs a tangent for source '{name}'")
                continue
            spec = parse_tensor(raw[name], path, errors, limits, default_dtype=info.dtype)
            if spec is None:
                continue
            if spec.shape != info.shape or spec.dtype != info.dtype:
                errors.add(
                    path,
                    f"is {spec.dtype}{list(spec.shape)} but source '{name}' is {info.dtype}{list(info.shape)}",
                )
            tangents[name] = spec
        req.tangents = tangents

    target = target_infos[0]
    for name, src in source_infos.items():
        path = pointer("sources", req.sources.index(name))
        if mode == "jacobian":
            size = target.size * src.size
        elif mode == "hessian":
            size = src.size * src.size
        elif mode == "batch_jacobian":
            if target.rank < 1 or src.rank < 1 or target.shape[0] != src.shape[0]:
                errors.add(
                    path,
                    f"batch_jacobian needs target and source with the same first (batch) dimension; "
                    f"target is {list(target.shape)}, '{name}' is {list(src.shape)}",
                )
                continue
            size = target.size * (src.size // max(src.shape[0], 1))
        else:
            continue
        if size > limits.max_result_elements:
            errors.limit(
                path,
                f"the {mode} for '{name}' would have {size} elements, over the limit "
                f"max_result_elements = {limits.max_result_elements}",
            )


_short = short_repr
