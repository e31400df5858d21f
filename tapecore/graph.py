"""The vocabulary of a request and the types of a checked graph: plain data, no TensorFlow."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from .cost import Cost
from .opspec import OpSpec, TensorInfo
from .tensors import TensorSpec

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
REF_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]{0,63})(?::([0-9]{1,4}))?$")

MODES = ("gradient", "jacobian", "batch_jacobian", "hessian", "jvp")
UNCONNECTED = ("none", "zero")
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
    expression: bool = False  # the graph came as an `expression` (errors about it point there)
    cost: Cost | None = None  # the cost model's estimate (tapecore/cost.py), once checked

    def info(self, ref: Ref) -> TensorInfo:
        return self.infos[ref]

    def without_values(self) -> GradientRequest:
        """The same graph with no tensor values: what a cache may keep without holding big arrays."""
        empty = {n: dataclasses.replace(t, value=None, fill=None, b64=None) for n, t in self.tensors.items()}
        return dataclasses.replace(self, tensors=empty, output_gradients=None, tangents=None)
