"""`GET /v1/ops` and `GET /v1/limits`: the op registry and the limits, from their tables."""

from __future__ import annotations

from flask import Blueprint
from flask.typing import ResponseReturnValue

from ..state import services

bp = Blueprint("ops", __name__)


@bp.get("/v1/ops")
def list_ops() -> ResponseReturnValue:
    """List every registered op with its aliases, inputs, attrs and description."""
    svc = services()
    return {"ops": svc.registry.describe(), "limits": svc.limits.as_dict()}


@bp.get("/v1/limits")
def list_limits() -> ResponseReturnValue:
    """List every limit a request must stay within."""
    return services().limits.as_dict()
