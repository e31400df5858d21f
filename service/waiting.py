"""How many of this process's requests may be parked waiting for a job at once.

A long-poll (`Prefer: wait=N`, or POST's default wait) holds a gunicorn thread until its job
ends. Past this many, a wait is declined and the request answered at once (202, or the job as
it stands), as RFC 7240 lets a server do with any preference: the other threads stay free for
health checks and new requests, however many clients long-poll.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class WaitSlots:
    """A count of parked waits, up to `capacity`, shared by this process's threads."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.parked = 0
        self._lock = threading.Lock()

    @contextmanager
    def held(self) -> Iterator[bool]:
        """Yield whether this request may wait (taking a slot if so); give the slot back after."""
        with self._lock:
            parked = self.parked < self.capacity
            if parked:
                self.parked += 1
        try:
            yield parked
        finally:
            if parked:
                with self._lock:
                    self.parked -= 1
