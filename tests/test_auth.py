"""API keys (hashed, constant-time), job ownership, and the rate limit, over a real Redis."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from service import create_app
from service.auth import KeyRing, digest, load_keys
from tests.examples import EXAMPLE_1

KEY_A = "alpha-key-0123456789abcdef"
KEY_B = "bravo-key-fedcba9876543210"


@pytest.fixture
def keyed(redis: Any, redis_server: Any, tmp_path: Path) -> Any:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# operators' keys\n{KEY_B}\n")
    app = create_app(
        {
            "TESTING": True,
            "REDIS_URL": redis_server.url,
            "DEFAULT_WAIT_S": 0,
            "WORKER_CHECK_S": 0,
            "API_KEYS": KEY_A,
            "API_KEYS_FILE": str(keys),
        }
    )
    return app.test_client()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_are_kept_only_as_hashes(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text("one\n\n# comment\ntwo  # trailing comment\n")
    hashes = load_keys("three, ,four", str(path))
    assert hashes == {digest(k) for k in ("one", "two", "three", "four")}
    assert not any(k in h for h in hashes for k in ("one", "two", "three", "four"))
    ring = KeyRing(hashes)
    assert ring.owner("two") == digest("two")[:32]
    assert ring.owner("five") is None


def test_a_request_without_a_valid_key_is_401(keyed: Any, worker: Any) -> None:
    worker.register()
    for headers in ({}, bearer("wrong"), {"X-API-Key": "wrong"}):
        response = keyed.post("/v1/gradients", json=EXAMPLE_1, headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].lower().startswith("bearer")
        assert response.get_json()["status"] == 401
    assert keyed.get("/healthz").status_code == 200  # public routes need no key
    assert keyed.get("/openapi.yaml").status_code == 200


def test_a_job_belongs_to_the_key_that_made_it(keyed: Any, worker: Any) -> None:
    worker.register()
    posted = keyed.post("/v1/gradients", json=EXAMPLE_1, headers=bearer(KEY_A))
    assert posted.status_code == 202
    job_id = posted.get_json()["id"]
    worker.work()
    assert keyed.get(f"/v1/jobs/{job_id}", headers={"X-API-Key": KEY_A}).get_json()["status"] == "finished"
    other = keyed.get(f"/v1/jobs/{job_id}", headers=bearer(KEY_B))
    unknown = keyed.get("/v1/jobs/00000000-0000-4000-8000-000000000000", headers=bearer(KEY_B))
    # Another key's job looks exactly like one that never existed.
    assert other.status_code == unknown.status_code == 404
    assert other.get_json()["title"] == unknown.get_json()["title"]
    assert keyed.delete(f"/v1/jobs/{job_id}", headers=bearer(KEY_B)).status_code == 404
    assert keyed.delete(f"/v1/jobs/{job_id}", headers=bearer(KEY_A)).status_code == 204


def test_keys_never_reach_logs_or_answers(keyed: Any, worker: Any, caplog: pytest.LogCaptureFixture) -> None:
    worker.register()
    caplog.set_level(logging.DEBUG)
    answers = [
        keyed.post("/v1/gradients", json=EXAMPLE_1, headers=bearer(KEY_A + "x")),
        keyed.post("/v1/gradients", json={"bad": 1}, headers=bearer(KEY_A)),
        keyed.post("/v1/gradients", json=EXAMPLE_1, headers=bearer(KEY_A)),
    ]
    worker.work()
    text = caplog.text + "".join(a.get_data(as_text=True) for a in answers)
    assert KEY_A not in text and digest(KEY_A) not in text


def test_the_rate_limit_is_per_key_with_retry_after(redis: Any, redis_server: Any, worker: Any) -> None:
    app = create_app(
        {
            "TESTING": True,
            "REDIS_URL": redis_server.url,
            "DEFAULT_WAIT_S": 0,
            "WORKER_CHECK_S": 0,
            "API_KEYS": f"{KEY_A},{KEY_B}",
            "RATE_LIMIT": "2/minute",
        }
    )
    client = app.test_client()
    worker.register()
    statuses = [client.get("/v1/limits", headers=bearer(KEY_A)).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    limited = client.get("/v1/limits", headers=bearer(KEY_A))
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    assert limited.mimetype == "application/problem+json"
    assert client.get("/v1/limits", headers=bearer(KEY_B)).status_code == 200  # B has its own count
    assert client.get("/healthz").status_code == 200  # public routes are not limited
