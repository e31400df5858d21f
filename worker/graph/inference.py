"""Order a graph's ops and infer every tensor's static shape and dtype, within the limits."""

from __future__ import annotations

from collections.abc import Mapping

from .dtypes import FLOAT_DTYPES
from .errors import ErrorCollector, pointer
from .graph import Literal, Node, Ref
from .limits import Limits
from .opspec import ShapeError, TensorInfo
from .tensors import TensorSpec


def topological_order(nodes: list[Node], paths: list[str], errors: ErrorCollector) -> list[Node]:
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


def infer_shapes(
    nodes: list[Node],
    tensors: Mapping[str, TensorSpec],
    declared_ids: set[str],
    limits: Limits,
    errors: ErrorCollector,
    graph_path: str = "/ops",
) -> dict[Ref, TensorInfo]:
    """Compute every tensor's static shape and dtype, checking sizes against the limits.

    `graph_path` is where an error about the whole graph points (/ops, or /expression).
    """
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
            graph_path,
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
