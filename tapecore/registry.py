"""The op registry: one table of OpSpec entries, looked up by name or alias."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from typing import Any

from .opspec import OpSpec


class UnknownOp(LookupError):
    """No registered op has this name; `suggestion` is the closest one, if any is close."""

    def __init__(self, name: str, suggestion: str | None):
        hint = f"; did you mean '{suggestion}'?" if suggestion else ""
        super().__init__(f"unknown op '{name}'{hint} (GET /v1/ops lists the registered ops)")
        self.name = name
        self.suggestion = suggestion


class Registry:
    """Ops by name and alias; the only way an op name becomes something that runs."""

    def __init__(self, specs: Iterable[OpSpec]):
        self._specs: dict[str, OpSpec] = {}
        self._names: dict[str, OpSpec] = {}
        for spec in specs:
            for name in (spec.name, *spec.aliases):
                if name in self._names:
                    raise ValueError(f"op name {name!r} is registered twice")
                self._names[name] = spec
            self._specs[spec.name] = spec

    def __iter__(self) -> Iterator[OpSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def names(self) -> list[str]:
        """Every name that resolves: canonical names and aliases."""
        return sorted(self._names)

    def resolve(self, name: str) -> OpSpec:
        """Return the op registered under this name or alias, or raise UnknownOp."""
        try:
            return self._names[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._names), n=1, cutoff=0.6)
            if not close:
                # `log1p` for `math.log1p`: match on the last dotted part too.
                tails = {n.rsplit(".", 1)[-1]: n for n in self._names}
                tail = difflib.get_close_matches(name.rsplit(".", 1)[-1], list(tails), n=1, cutoff=0.8)
                close = [tails[tail[0]]] if tail else []
            raise UnknownOp(name, close[0] if close else None) from None

    def describe(self) -> list[dict[str, Any]]:
        """Describe every op for `GET /v1/ops`, sorted by name."""
        return [spec.describe() for spec in sorted(self, key=lambda s: s.name)]
