"""The targets, the sources, and what each mode needs (output gradients, tangents, sizes)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .dtypes import is_float
from .errors import ErrorCollector, pointer, short_repr
from .graph import REF_RE, GradientRequest, Node, Ref
from .limits import Limits
from .opspec import TensorInfo
from .tensors import TensorSpec, parse_tensor


def parse_targets(
    doc: Mapping[str, Any],
    expr_target: str | None,
    tensors: Mapping[str, TensorSpec],
    nodes: list[Node],
    declared_ids: set[str],
    infos: Mapping[Ref, TensorInfo],
    errors: ErrorCollector,
) -> tuple[list[Ref], bool]:
    if "expression" in doc:
        if expr_target is None:
            return [], False  # the expression itself was refused, with its own errors
        if Ref(expr_target) in infos:
            return [Ref(expr_target)], False
        if expr_target not in declared_ids:  # a bare name that is nothing: `"expression": "q"`
            errors.add("/expression", f"unknown name '{expr_target}': not a tensor", 0)
        return [], False
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
            errors.add(path, f"must be a tensor name, an op id or 'id:k', not {short_repr(item)}")
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


def parse_sources(
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
            size = target.bound * src.bound
        elif mode == "hessian":
            size = src.bound * src.bound
        elif mode == "batch_jacobian":
            if target.rank < 1 or src.rank < 1 or target.shape[0] != src.shape[0]:
                errors.add(
                    path,
                    f"batch_jacobian needs target and source with the same first (batch) dimension; "
                    f"target is {list(target.shape)}, '{name}' is {list(src.shape)}",
                )
                continue
            size = target.bound * (src.bound // max(src.shape[0], 1))
        else:
            continue
        if size > limits.max_result_elements:
            errors.limit(
                path,
                f"the {mode} for '{name}' would have {size} elements, over the limit "
                f"max_result_elements = {limits.max_result_elements}",
                limit="max_result_elements",
                maximum=limits.max_result_elements,
                estimate=size,
            )
