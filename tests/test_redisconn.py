"""Connecting through Redis Sentinel, against a real redis-server in sentinel mode."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from tapecore.redisconn import connect
from tests.conftest import RedisServer, free_port, redis_ping, wait_until


@pytest.fixture
def sentinel(redis_server: RedisServer) -> Iterator[int]:
    binary = shutil.which("redis-server")
    assert binary is not None
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="tapeserve-sentinel-"))
    conf = workdir / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\nsentinel monitor tapeserve 127.0.0.1 {redis_server.port} 1\n"
        "sentinel down-after-milliseconds tapeserve 1000\n"
    )
    proc = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, cwd=workdir)
    try:
        wait_until(lambda: redis_ping(port), 10, "redis sentinel")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def test_connect_finds_the_primary_through_sentinel(redis: Redis, sentinel: int) -> None:
    client = connect("redis://ignored:1/3", sentinels=f"127.0.0.1:{sentinel}", master="tapeserve")
    client.set("tapeserve:probe", b"via-sentinel")
    client.close()
    direct = Redis(port=redis.connection_pool.connection_kwargs["port"], db=3)
    assert direct.get("tapeserve:probe") == b"via-sentinel"
    direct.close()


def test_plain_url_without_sentinels(redis: Redis, redis_server: RedisServer) -> None:
    client = connect(redis_server.url)
    assert client.ping()
    client.close()
