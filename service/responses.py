"""Flask's JSON provider over orjson: a view returns a dict (with a status and headers) and
Flask encodes it here, orjson.Fragment results (the worker's JSON, unparsed) included."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response
from flask.json.provider import JSONProvider


class OrjsonProvider(JSONProvider):
    """Encode and decode JSON with orjson."""

    mimetype = "application/json"

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        # Bytes straight from orjson: no decode to str and encode back for every answer.
        body = orjson.dumps(self._prepare_response_obj(args, kwargs))
        return Response(body, mimetype=self.mimetype)
