"""What the app factory builds once and the views use: Redis, the job queue, the limits."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app
from redis import Redis

from tapecore.limits import Limits
from tapecore.registry import Registry

from .inflight import BodyBudget
from .jobqueue import JobQueue
from .waiting import WaitSlots


@dataclass
class Services:
    redis: Redis
    jobs: JobQueue
    limits: Limits
    registry: Registry
    pools: tuple[str, ...]
    body_budget: BodyBudget
    waits: WaitSlots


def services() -> Services:
    """Return the services of the current app."""
    return current_app.extensions["tapeserve"]  # type: ignore[no-any-return]
