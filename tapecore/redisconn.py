"""One way to connect to Redis for both sides: a URL, or Redis Sentinel for failover.

RQ needs one Redis primary (it does not support Redis Cluster: its queues use
multi-key operations). For failover, run Redis with Sentinel and set
`REDIS_SENTINELS=host1:26379,host2:26379` and `REDIS_SENTINEL_MASTER=mymaster`;
`REDIS_URL` then only supplies the database number and password.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from redis import Redis
from redis.sentinel import Sentinel


def connect(
    url: str,
    *,
    sentinels: str = "",
    master: str = "",
    **options: Any,
) -> Redis:
    """Return a Redis client for `url`, or for the Sentinel-monitored primary `master`."""
    if not sentinels:
        return Redis.from_url(url, **options)
    parsed = urlparse(url)
    db = int((parsed.path or "/0").lstrip("/") or 0)
    hosts = []
    for item in sentinels.split(","):
        host, _, port = item.strip().rpartition(":")
        hosts.append((host or item.strip(), int(port or 26379)))
    sentinel = Sentinel(hosts, socket_timeout=options.get("socket_connect_timeout", 5))
    return sentinel.master_for(master or "mymaster", db=db, password=parsed.password, **options)


def connect_from_env(url: str, environ: Mapping[str, str] = os.environ, **options: Any) -> Redis:
    """Connect as `connect` does, reading REDIS_SENTINELS and REDIS_SENTINEL_MASTER."""
    return connect(
        url,
        sentinels=environ.get("REDIS_SENTINELS", ""),
        master=environ.get("REDIS_SENTINEL_MASTER", ""),
        **options,
    )
