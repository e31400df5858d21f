"""Marshmallow schemas for the request envelopes; the graph inside is checked by the engine's
TensorFlow-free validator (tapecore.request), which knows the ops and shapes."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from tapecore.errors import FieldError, GraphError, pointer
from tapecore.graph import ENCODINGS, MODES, UNCONNECTED
from tapecore.protocol import DEVICES


class TensorsField(fields.Dict):
    default_error_messages = {"invalid": "must be an object of name -> tensor"}


class GradientRequestSchema(Schema):
    """The top level of `POST /v1/gradients`."""

    class Meta:
        unknown = RAISE

    tensors = TensorsField(keys=fields.String(), values=fields.Raw(allow_none=True), required=True)
    ops = fields.List(fields.Raw(), load_default=None)
    expression = fields.String(load_default=None)
    target = fields.Raw(load_default=None)
    sources = fields.List(fields.String(), required=True, validate=validate.Length(min=1))
    mode = fields.String(validate=validate.OneOf(MODES))
    order = fields.Integer(strict=True, validate=validate.Range(min=1))
    output_gradients = fields.Raw()
    tangents = fields.Dict(keys=fields.String(), values=fields.Raw())
    unconnected_gradients = fields.String(validate=validate.OneOf(UNCONNECTED))
    device = fields.String(validate=validate.OneOf(DEVICES))
    encoding = fields.String(validate=validate.OneOf(ENCODINGS))

    @validates_schema
    def graph_form(self, data: dict[str, Any], **kwargs: Any) -> None:
        has_expr = data.get("expression") is not None
        has_ops = data.get("ops") is not None or data.get("target") is not None
        if has_expr and has_ops:
            raise ValidationError("give either 'expression' or 'ops' with 'target', not both", "expression")
        if not has_expr and not has_ops:
            raise ValidationError("give an 'expression', or 'ops' with a 'target'", "expression")
        if has_ops and data.get("target") is None:
            raise ValidationError("is required with 'ops'", "target")


class BatchSchema(Schema):
    """The top level of `POST /v1/batches`."""

    class Meta:
        unknown = RAISE

    graphs = fields.List(fields.Raw(), required=True, validate=validate.Length(min=1))
    device = fields.String(validate=validate.OneOf(DEVICES))


GRADIENT_SCHEMA = GradientRequestSchema()
BATCH_SCHEMA = BatchSchema()


def check_envelope(schema: Schema, doc: Any) -> None:
    """Raise GraphError with a JSON Pointer for each envelope error marshmallow finds."""
    if not isinstance(doc, dict):
        raise GraphError(FieldError("", "the body must be a JSON object"))
    messages = schema.validate(doc)
    if messages:
        _raise(messages)


def _raise(messages: Any) -> None:
    errors: list[FieldError] = []
    _flatten(messages, [], errors)
    raise GraphError(errors)


def _flatten(messages: Any, path: list[str | int], out: list[FieldError]) -> None:
    if isinstance(messages, dict):
        for key, value in messages.items():
            _flatten(value, path if key == "_schema" else [*path, key], out)
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        for m in messages:
            out.append(FieldError(pointer(*path), _friendly(m)))
    elif isinstance(messages, list):
        for i, m in enumerate(messages):
            _flatten(m, [*path, i], out)
    else:
        out.append(FieldError(pointer(*path), str(messages)))


def _friendly(message: str) -> str:
    return {"Unknown field.": "unknown field", "Missing data for required field.": "is required"}.get(message, message)
