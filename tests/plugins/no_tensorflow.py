"""A pytest plugin that makes TensorFlow and numpy unimportable, as in an image with the `api` extra alone.

Use: `pytest -p tests.plugins.no_tensorflow tests/test_api.py`. The blocker is installed when the
plugin is imported, before any test module. A test may skip for want of TensorFlow only if it asks
for an engine fixture (`worker`, `tf`); any other such skip, or a module skipped whole, fails.
"""

from __future__ import annotations

import sys
from collections.abc import Generator, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

import pytest

BLOCKED = ("tensorflow", "numpy")
BLOCKED_MESSAGE = "is blocked: the API must run with the `api` extra alone"
ENGINE_FIXTURES = {"worker", "tf"}


class Blocker:
    """A meta path finder that refuses the blocked packages and their submodules."""

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> ModuleSpec | None:
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name} {BLOCKED_MESSAGE}", name=name)
        return None


if already := sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED):
    raise RuntimeError(f"loaded before the blocker: {already}; put -p tests.plugins.no_tensorflow first")
sys.meta_path.insert(0, Blocker())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    asks_for_engine = ENGINE_FIXTURES & set(getattr(item, "fixturenames", ()))
    if report.skipped and BLOCKED_MESSAGE in str(report.longrepr) and not asks_for_engine:
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} skipped for want of TensorFlow but asks for no engine fixture"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, Any]:
    report = yield
    if report.skipped and BLOCKED_MESSAGE in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = f"{collector.nodeid} is skipped whole for want of TensorFlow"
    return report
