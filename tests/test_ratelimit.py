"""The rate limits, over a real Redis: one budget per key across every route, one per address
counted before the key is checked, and `Retry-After` only where it means something."""

from __future__ import annotations

from typing import Any

import pytest

from service import create_app
from service.ratelimit import DEFAULT_ADDRESS_RATE_LIMIT, address_limit

KEY_A = "alpha-key-0123456789abcdef"
KEY_B = "bravo-key-fedcba9876543210"
GRAPH = {"tensors": {"x": 3.0}, "expression": "x * x", "sources": ["x"]}
INVALID = {"tensors": {"x": 3.0}, "expression": "mulitply(x, x)", "sources": ["x"]}
PROBLEM = "application/problem+json"


def make_client(redis_server: Any, **config: Any) -> Any:
    app = create_app(
        {"TESTING": True, "REDIS_URL": redis_server.url, "DEFAULT_WAIT_S": 0, "WORKER_CHECK_S": 0, **config}
    )
    return app.test_client()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_one_budget_per_key_across_every_route(redis: Any, redis_server: Any) -> None:
    client = make_client(redis_server, API_KEYS=KEY_A, RATE_LIMIT="6/minute", ADDRESS_RATE_LIMIT="")
    calls = [
        lambda: client.get("/v1/limits", headers=bearer(KEY_A)),
        lambda: client.get("/v1/ops", headers=bearer(KEY_A)),
        lambda: client.get("/v1/jobs/no-such-job", headers=bearer(KEY_A)),
        lambda: client.post("/v1/gradients", json=INVALID, headers=bearer(KEY_A)),
    ]
    statuses = [call().status_code for _ in range(2) for call in calls]
    # Per route, each of the 4 routes would have had 6 requests of its own: all 8 would pass.
    assert statuses == [200, 200, 404, 422, 200, 200, 429, 429]
    assert client.get("/v1/limits", headers=bearer(KEY_A)).status_code == 429
    assert client.get("/healthz").status_code == 200  # public routes spend nothing


def test_wrong_keys_are_limited_per_address_before_they_are_refused(redis: Any, redis_server: Any) -> None:
    client = make_client(redis_server, API_KEYS=KEY_A, ADDRESS_RATE_LIMIT="5/minute")
    answers = [client.get("/v1/limits", headers=bearer(f"guess-{i}")) for i in range(7)]
    assert [a.status_code for a in answers] == [401] * 5 + [429] * 2
    limited = answers[-1]
    assert limited.mimetype == PROBLEM and limited.json["type"].endswith("/too-many-requests")
    assert "this client address" in limited.json["detail"] and "5 per 1 minute" in limited.json["detail"]
    assert 1 <= int(limited.headers["Retry-After"]) <= 61  # the window, rounded up
    assert limited.headers["X-RateLimit-Limit"] == "5" and limited.headers["X-RateLimit-Remaining"] == "0"
    # The address's budget is spent for everyone there, a valid key included ...
    assert client.get("/v1/limits", headers=bearer(KEY_A)).status_code == 429
    # ... and only there: another address has its own.
    other = client.get("/v1/limits", headers=bearer(KEY_A), environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert other.status_code == 200


def test_the_address_limit_is_on_by_default_with_keys_and_off_without() -> None:
    assert address_limit(None, keys_on=True) == DEFAULT_ADDRESS_RATE_LIMIT
    assert address_limit(None, keys_on=False) == ""
    assert address_limit("", keys_on=True) == ""  # turned off on purpose
    assert address_limit("7/second", keys_on=False) == "7/second"


def test_keys_share_their_address_budget_but_not_their_own(redis: Any, redis_server: Any) -> None:
    client = make_client(
        redis_server, API_KEYS=f"{KEY_A},{KEY_B}", RATE_LIMIT="2/minute", ADDRESS_RATE_LIMIT="5/minute"
    )
    a = [client.get("/v1/limits", headers=bearer(KEY_A)).status_code for _ in range(3)]
    assert a == [200, 200, 429]  # A's own budget; the 429 still spent one of the address's 5
    b = [client.get("/v1/limits", headers=bearer(KEY_B)).status_code for _ in range(2)]
    assert b == [200, 200]  # B's budget is its own; the address has now seen 5
    over = client.get("/v1/limits", headers=bearer(KEY_B))
    assert over.status_code == 429 and "this client address" in over.json["detail"]


@pytest.mark.parametrize("hops", [0, 1])
def test_the_address_is_the_proxys_client_only_behind_a_trusted_proxy(redis: Any, redis_server: Any, hops: int) -> None:
    client = make_client(redis_server, API_KEYS=KEY_A, ADDRESS_RATE_LIMIT="2/minute", PROXY_HOPS=hops)

    def from_(addr: str) -> int:
        return int(client.get("/v1/limits", headers={**bearer(KEY_A), "X-Forwarded-For": addr}).status_code)

    statuses = [from_(f"198.51.100.{i}") for i in range(4)]
    # Trusted: each forwarded address has its own budget. Not trusted: the header is the
    # client's own word, and changing it escapes nothing.
    assert statuses == ([200] * 4 if hops else [200, 200, 429, 429])


def test_retry_after_only_on_429_and_503(redis: Any, redis_server: Any, worker: Any) -> None:
    client = make_client(redis_server, RATE_LIMIT="4/minute")
    worker.register()
    queued = client.post("/v1/gradients", json=GRAPH)
    assert queued.status_code == 202 and "Retry-After" not in queued.headers
    polled = client.get(f"/v1/jobs/{queued.json['id']}")
    assert polled.status_code == 200 and "Retry-After" not in polled.headers
    listed = client.get("/v1/limits")
    assert listed.status_code == 200 and "Retry-After" not in listed.headers
    assert not any(h.startswith("X-RateLimit") for h in listed.headers.keys())
    assert client.get("/v1/ops").status_code == 200
    limited = client.get("/v1/limits")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert int(limited.headers["X-RateLimit-Reset"]) > 0
