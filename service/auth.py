"""Optional API keys: kept only as SHA-256 hashes, compared in constant time.

With no keys configured (the default, for local use) every request is anonymous. With keys,
every `/v1/` request needs one (`Authorization: Bearer KEY` or `X-API-Key: KEY`), and a job
belongs to the key that made it: the job's owner is a digest of the key, never the key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path

from flask import Flask, g, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Unauthorized

PUBLIC_ENDPOINTS = frozenset(
    {
        "health.healthz",
        "health.readyz",
        "metrics.metrics",
        "docs.openapi",
        "docs.docs",
        "docs.docs_static",
        "problem_pages.problem_page",
    }
)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_keys(inline: str, path: str) -> frozenset[str]:
    """Read keys from a comma-separated string and a file (one per line, # comments); keep hashes."""
    keys: list[str] = [k.strip() for k in inline.split(",")]
    if path:
        keys += [line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines()]
    return frozenset(digest(k) for k in keys if k)


class KeyRing:
    """The hashes of the accepted keys."""

    def __init__(self, hashes: Iterable[str]):
        self._hashes = tuple(hashes)

    @property
    def enabled(self) -> bool:
        return bool(self._hashes)

    def owner(self, presented: str) -> str | None:
        """Return the owner id of a valid key, comparing against every hash in constant time."""
        h = digest(presented)
        found = False
        for known in self._hashes:
            found |= hmac.compare_digest(h, known)
        return h[:32] if found else None


def presented_key() -> str:
    """Return the key of `Authorization: Bearer KEY` (parsed by Werkzeug) or of `X-API-Key`."""
    auth = request.authorization
    if auth is not None and auth.type == "bearer" and auth.token:
        return auth.token
    return request.headers.get("X-API-Key", "").strip()


def install_auth(app: Flask, ring: KeyRing) -> None:
    """Identify the key of every non-public request (`g.owner`, for the job store and the rate limit)."""

    @app.before_request
    def identify() -> None:
        g.owner = ""
        g.key_refusal = None
        if not ring.enabled or request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
            return
        key = presented_key()
        owner = ring.owner(key) if key else None
        if owner is None:
            challenge = WWWAuthenticate("bearer", {"realm": "tapeserve"})
            g.key_refusal = Unauthorized(
                "a valid API key is required" if not key else "the API key is not valid",
                www_authenticate=challenge,
            )
        else:
            g.owner = owner


def install_key_check(app: Flask) -> None:
    """Refuse a request whose key is missing or wrong; installed after the rate limit, which counts it first."""

    @app.before_request
    def refuse_without_key() -> None:
        if g.get("key_refusal") is not None:
            raise g.key_refusal
