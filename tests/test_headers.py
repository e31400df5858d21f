"""Standard headers read with Werkzeug's parsers; JSON answers written by Flask's provider (orjson)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from werkzeug.datastructures import Headers

from service.prefer import Preferences, parse_prefer


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["respond-async, wait=10"], Preferences(True, 10.0)),
        (["Respond-Async"], Preferences(True, None)),
        (['wait="5"'], Preferences(False, 5.0)),
        (["wait=10; p=q, respond-async"], Preferences(True, 10.0)),  # a preference's parameters are skipped
        (["wait=abc"], Preferences(False, None)),
        (["wait=-1"], Preferences(False, None)),
        (["wait=nan"], Preferences(False, None)),
        (["handling=lenient", "wait=2"], Preferences(False, 2.0)),
        # A quoted comma is inside a value, not between preferences.
        (['x="a, wait=9"'], Preferences(False, None)),
        # RFC 7240, section 2: a preference given twice counts at its first instance.
        (["wait=1, wait=5"], Preferences(False, 1.0)),
        (["wait=1", "wait=5"], Preferences(False, 1.0)),
    ],
)
def test_prefer_is_read_as_rfc_7240_says(values: list[str], expected: Preferences) -> None:
    assert parse_prefer(Headers([("Prefer", v) for v in values])) == expected


def test_bearer_keys_are_read_by_werkzeug(redis_server: Any, redis: Any) -> None:
    from service import create_app

    client = create_app({"TESTING": True, "REDIS_URL": redis_server.url, "API_KEYS": "k1"}).test_client()
    for given in ("Bearer k1", "bearer k1", "BEARER   k1 "):
        assert client.get("/v1/limits", headers={"Authorization": given}).status_code == 200, given
    for given in ("Bearer k2", "Basic azE6", "Bearer", "k1"):
        assert client.get("/v1/limits", headers={"Authorization": given}).status_code == 401, given
    assert client.get("/v1/limits", headers={"X-API-Key": "k1"}).status_code == 200


def test_json_answers_are_written_by_an_orjson_provider(app: Any, client: Any) -> None:
    from service.responses import OrjsonProvider

    assert isinstance(app.json, OrjsonProvider)
    answer = client.get("/v1/limits")
    assert answer.status_code == 200 and answer.mimetype == "application/json"
    assert answer.get_data() == orjson.dumps(app.extensions["tapeserve"].limits.as_dict())
    with app.test_request_context():
        fragment = app.json.response({"result": orjson.Fragment(b'{"x":1}')})
        assert fragment.get_data() == b'{"result":{"x":1}}'
