"""What the API and the worker agree on: queue names, the job function, the serializer.

Plain Python: imported by both sides, so neither imports the other's framework.
"""

from __future__ import annotations

from typing import Any

import orjson

POOLS = ("cpu", "gpu")
DEVICES = ("any", *POOLS)
QUEUE_PREFIX = "tapeserve"
# `any` jobs wait in their own queue that every pool's workers also take: whichever worker
# is free first runs them (RQ workers take queues in order, so a pool's own jobs come first).
POOL_QUEUES = {"cpu": ("cpu", "any"), "gpu": ("gpu", "any")}

JOB_FUNCTION = "worker.jobs.run_graph"
BATCH_FUNCTION = "worker.jobs.run_batch"

# The problem document of a failed job is kept in its meta under this key.
PROBLEM_META = "problem"
OWNER_META = "owner"
REQUEST_ID_META = "request_id"


def payload_key(job_id: str) -> str:
    """Where a job's request document waits for its worker (kept out of RQ's job hash, which
    RQ compresses and reads on every status check)."""
    return f"{QUEUE_PREFIX}:payload:{job_id}"


def queue_name(device: str) -> str:
    """Return the Redis queue name of a device pool (or of `any`)."""
    return f"{QUEUE_PREFIX}:{device}"


class OrjsonSerializer:
    """RQ serializer over JSON (orjson): user data is never pickled."""

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)

    @staticmethod
    def loads(data: bytes | str) -> Any:
        return orjson.loads(data)
