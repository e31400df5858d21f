"""What is defined once: the devices, the limits loader, the problem-type base."""

from __future__ import annotations

from typing import Any

import pytest


def test_the_devices_are_the_protocols() -> None:
    import tapecore.graph
    import tapecore.request
    from tapecore.protocol import DEVICES, POOLS

    assert DEVICES == ("any", *POOLS)
    assert tapecore.request.DEVICES is DEVICES
    assert not hasattr(tapecore.graph, "DEVICES"), "a second definition would drift from the pools"


def test_the_api_and_the_worker_read_limits_from_the_same_environment_the_same_way(
    redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from service import create_app
    from tapecore.limits import Limits

    monkeypatch.setenv("TAPESERVE_MAX_OPS", "7")
    monkeypatch.setenv("TAPESERVE_TIME_LIMIT_S", "2.5")
    monkeypatch.setenv("TAPESERVE_MAX_WAIT_S", "9")  # an API setting, not a limit: ignored by Limits
    worker_limits = Limits.from_mapping(os.environ, prefix="TAPESERVE_")
    api_limits = create_app({"TESTING": True, "REDIS_URL": redis_server.url}).extensions["tapeserve"].limits
    assert worker_limits == api_limits == Limits(max_ops=7, time_limit_s=2.5)


def test_the_two_lrus_are_cachetools_pinned_in_the_base_dependencies() -> None:
    import tomllib
    from pathlib import Path

    from cachetools import LRUCache

    from tapecore.parsecache import RequestCache

    root = Path(__file__).resolve().parent.parent
    assert "cachetools==8.0.0" in (root / "constraints.txt").read_text().splitlines()
    base = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("cachetools") for d in base)
    assert isinstance(RequestCache()._entries, LRUCache)
    source = (root / "worker" / "engine" / "cache.py").read_text()  # imports TensorFlow-free, but read it as text
    assert "LRUCache(maxsize=capacity)" in source and "OrderedDict" not in source
