"""Order a graph's ops and infer every tensor's static shape and dtype, within the limits."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from .cost import Tally
from .dtypes import FLOAT_DTYPES, ITEMSIZE
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
    sources: Collection[str] = (),
) -> tuple[dict[Ref, TensorInfo], Tally]:
    """Compute every tensor's static shape and dtype, checking sizes against the limits.

    In the same pass, tally what the forward graph holds and costs for the cost model: each
    size counts a zero dimension as 1. `sources` names the tensors differentiated with
    respect to (what depends on them gets a gradient). `graph_path` is where an error about
    the whole graph points (/ops, or /expression).
    """
    infos: dict[Ref, TensorInfo] = {}
    tally = Tally()
    for n, t in tensors.items():
        given = infos[Ref(n)] = TensorInfo(t.shape, t.dtype)
        tally.hold(given, n in sources and given.dtype in FLOAT_DTYPES)
        tally.input_bytes += given.bound * ITEMSIZE[given.dtype]
        if n in sources:
            tally.connected.add(n)
    known_ids = {n.id for n in nodes} | declared_ids
    connected_names = tally.connected
    max_elements, max_rank, max_dimension = limits.max_intermediate_elements, limits.max_rank, limits.max_dimension
    total = 0
    for node in nodes:
        ins: list[TensorInfo] = []
        ok = True
        connected = literals = False
        for k, item in enumerate(node.inputs):
            if isinstance(item, Literal):
                ins.append(item.info)
                literals = True
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
            connected = connected or item.name in connected_names
            ins.append(info)
        if not ok:
            continue
        if literals:
            ins = _literal_dtypes(node, ins, tally)
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
        fits = True
        for k, out in enumerate(outs):
            if out.bound > max_elements or len(out.shape) > max_rank or (out.shape and max(out.shape) > max_dimension):
                fits = _check_output(node, out, limits, errors) and fits
            total += out.bound
            infos[Ref(node.id, k)] = out
        if not fits:
            continue  # a cost rule may assume sizes within the limits (products of dimensions)
        connected = connected and node.spec.differentiable
        if connected:
            connected_names.add(node.id)
        tally.add_op(node, ins, outs, connected)
    if total > limits.max_total_elements:
        errors.limit(
            graph_path,
            f"the graph would hold {total} elements in all, over the limit "
            f"max_total_elements = {limits.max_total_elements}",
            limit="max_total_elements",
            maximum=limits.max_total_elements,
            estimate=total,
        )
    return infos, tally


def _check_output(node: Node, out: TensorInfo, limits: Limits, errors: ErrorCollector) -> bool:
    """Check one output's rank, axes and size against the limits; say whether it fits."""
    fits = True
    if out.rank > limits.max_rank:
        errors.limit(
            node.path,
            f"output rank {out.rank} is over the limit max_rank = {limits.max_rank}",
            node.position,
            limit="max_rank",
            maximum=limits.max_rank,
            estimate=out.rank,
        )
        fits = False
    longest = max(out.shape, default=0)
    if longest > limits.max_dimension:
        errors.limit(
            node.path,
            f"op '{node.id}' would make an axis of length {longest} (shape {list(out.shape)}), over the limit "
            f"max_dimension = {limits.max_dimension}",
            node.position,
            limit="max_dimension",
            maximum=limits.max_dimension,
            estimate=longest,
        )
        fits = False
    if out.bound > limits.max_intermediate_elements:
        counted = "elements" if 0 not in out.shape else "elements (a zero dimension counted as 1)"
        errors.limit(
            node.path,
            f"op '{node.id}' would make {out.bound} {counted}, over the limit "
            f"max_intermediate_elements = {limits.max_intermediate_elements}",
            node.position,
            limit="max_intermediate_elements",
            maximum=limits.max_intermediate_elements,
            estimate=out.bound,
        )
        fits = False
    return fits


def _literal_dtypes(node: Node, ins: list[TensorInfo], tally: Tally) -> list[TensorInfo]:
    """Give inline literals the dtype hand-written TF would: the float dtype of their peers; tally them."""
    peers = [t.dtype for t, i in zip(ins, node.inputs, strict=True) if not isinstance(i, Literal)]
    float_peer = next((d for d in peers if d in FLOAT_DTYPES), "float32")
    out = []
    for k, (info, item) in enumerate(zip(ins, node.inputs, strict=True)):
        if isinstance(item, Literal):
            dtype = "int32" if k in node.spec.int_inputs else float_peer
            info = TensorInfo(info.shape, dtype)
            node.inputs[k] = Literal(item.value, info)
            tally.hold(info, False)
        out.append(info)
    return out
