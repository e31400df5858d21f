"""Every bound on a request, with its unit and the reason for its default.

One frozen dataclass, so that the API and the worker agree and the README, `GET /v1/limits`
and the configuration (`TAPESERVE_MAX_*`) are generated from the same fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Limits:
    """The bounds a request must stay within."""

    max_body_bytes: int = 64 * 1024 * 1024  # 64 MiB: a 1000x1000 float32 tensor as JSON is ~10 MiB
    max_json_depth: int = 64  # nesting of JSON containers; rank <= 32 needs far less
    max_ops: int = 2_000  # graph nodes; the 200-op benchmark chain fits ten times over
    max_tensors: int = 256  # named input tensors
    max_sources: int = 64  # tensors differentiated with respect to
    max_tensor_elements: int = 16_777_216  # elements of one input tensor: 64 MiB of float32
    max_rank: int = 8  # dimensions of any tensor; TF kernels rarely go past 8
    max_dimension: int = 16_777_216  # length of any one axis: no axis may exceed max_tensor_elements
    max_expression_length: int = 4_096  # characters of `expression`
    max_expression_depth: int = 200  # nesting of the syntax tree: a flat sum of n terms nests n deep
    max_order: int = 4  # derivative order by nested tapes; cost grows geometrically
    max_intermediate_elements: int = 16_777_216  # elements of any op's output (64 MiB of float32)
    max_result_elements: int = 16_777_216  # elements of a Jacobian or Hessian: 64 MiB of float32
    max_total_elements: int = 134_217_728  # all intermediates together: 512 MiB of float32
    max_result_bytes: int = 134_217_728  # 128 MiB: the encoded result, worst case, estimated before anything runs
    max_memory_bytes: int = 2_147_483_648  # 2 GiB: estimated peak working memory of one job, backward pass included
    max_flops: int = 4_000_000_000_000  # estimated floating-point operations of one job, backward pass included
    max_batch_graphs: int = 1_000  # graphs in one `POST /v1/batches`
    max_batch_ops: int = 20_000  # ops of all graphs of one batch together: bounds the API's CPU per batch
    time_limit_s: float = 60.0  # wall time of one job in the TensorFlow process

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], prefix: str = "") -> Limits:
        """Build limits from the keys `<prefix><FIELD>` of a mapping, in any case; others are ignored.

        The one loader: the API passes its config (`MAX_OPS`), the worker its environment
        (`TAPESERVE_MAX_OPS`), so both read the same names the same way.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, raw in values.items():
            if not key.upper().startswith(prefix.upper()):
                continue
            name = key[len(prefix) :].lower()
            if name in fields:
                kwargs[name] = float(raw) if name == "time_limit_s" else int(raw)
        return cls(**kwargs)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DEFAULT_LIMITS = Limits()
