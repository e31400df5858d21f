"""The `Prefer` request header (RFC 7240): `respond-async` and `wait=N`, read with Werkzeug's parsers."""

from __future__ import annotations

from dataclasses import dataclass

from werkzeug.datastructures import Headers
from werkzeug.http import parse_dict_header, parse_list_header, parse_options_header


@dataclass(frozen=True)
class Preferences:
    respond_async: bool = False
    wait: float | None = None  # seconds, as the client asked


def parse_prefer(headers: Headers) -> Preferences:
    """Read every `Prefer` header; unknown or malformed preferences are ignored, as 7240 says.

    A preference given more than once counts at its first instance (RFC 7240, section 2).
    """
    given: dict[str, str | None] = {}
    for header in headers.getlist("Prefer"):
        for item in parse_list_header(header):
            preference, _parameters = parse_options_header(item)  # `wait=5; p=q` -> `wait=5`
            for token, value in parse_dict_header(preference).items():
                given.setdefault(token.strip().lower(), value)
    return Preferences("respond-async" in given, _seconds(given.get("wait")))


def _seconds(value: str | None) -> float | None:
    try:
        seconds = float(value or "")
    except ValueError:
        return None
    return seconds if seconds >= 0 else None  # NaN compares false, so it is refused too
