"""The `Prefer` request header (RFC 7240): `respond-async` and `wait=N`."""

from __future__ import annotations

from dataclasses import dataclass

from werkzeug.datastructures import Headers


@dataclass(frozen=True)
class Preferences:
    respond_async: bool = False
    wait: float | None = None  # seconds, as the client asked


def parse_prefer(headers: Headers) -> Preferences:
    """Read every `Prefer` header; unknown or malformed preferences are ignored, as 7240 says."""
    respond_async = False
    wait: float | None = None
    for header in headers.getlist("Prefer"):
        for item in header.split(","):
            token, _, value = item.split(";", 1)[0].strip().partition("=")
            token = token.strip().lower()
            value = value.strip().strip('"')
            if token == "respond-async":
                respond_async = True
            elif token == "wait":
                try:
                    seconds = float(value)
                except ValueError:
                    continue
                if seconds >= 0 and seconds == seconds:  # not NaN
                    wait = seconds
    return Preferences(respond_async, wait)
