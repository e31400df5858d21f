"""The Redis transaction a job's start and outcome are written in: MULTI/EXEC, its replies read later.

This replaces redis-py's `Pipeline.execute` for the worker's two transactions a job, and relies
on redis-py internals (redis 8.x): `Pipeline.command_stack` (the commands RQ queued on a
pipeline, read by `queued_commands`), and `Connection.pack_commands`, `send_packed_command` and
`read_response` on a connection taken from the pool. Why:

- The worker writes a job's start and, without waiting, hands the job to TensorFlow; Redis
  runs the transaction meanwhile and the replies wait in the socket. redis-py's pipeline
  cannot split sending from reading. A helper thread sending it would do the same, but its
  Python work took the GIL and a core from the job (docs/performance.md).
- An error reply is raised as it is: redis-py annotates it with the failed command's text,
  squeezed by textwrap, which takes seconds for a result of tens of MB (a full Redis refuses
  such a result).
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import ResponseError


def queued_commands(pipe: Pipeline) -> list[tuple[Any, ...]]:
    """The commands queued on `pipe` (by RQ's methods, given `pipeline=`), unsent."""
    return [args for args, _ in pipe.command_stack]


class SentTransaction:
    """A MULTI/EXEC transaction written to Redis now, its replies read later (`result`)."""

    def __init__(self, redis: Redis, commands: list[tuple[Any, ...]]):
        self.pool = redis.connection_pool
        self.count = len(commands)
        self.conn = self.pool.get_connection()
        try:
            self.conn.send_packed_command(self.conn.pack_commands([("MULTI",), *commands, ("EXEC",)]))
        except BaseException:
            self._drop()
            raise

    def result(self) -> list[Any]:
        """Read every reply (MULTI's, one per command, EXEC's); raise the first error among them."""
        replies: list[Any] = []
        try:
            for _ in range(self.count + 2):
                try:
                    replies.append(self.conn.read_response())
                except ResponseError as exc:  # an error reply: read the rest before raising
                    replies.append(exc)
        except BaseException:
            self._drop()
            raise
        self.pool.release(self.conn)
        done = replies[-1]
        errors = [r for r in (*replies[:-1], *(done if isinstance(done, list) else [])) if isinstance(r, Exception)]
        if errors:
            raise errors[0]
        if done is None:
            raise ResponseError("the transaction was aborted")
        return list(done)

    def _drop(self) -> None:
        """Close the connection (replies may be left unread on it) and give it back to the pool."""
        self.conn.disconnect()
        self.pool.release(self.conn)


def send_transaction(redis: Redis, pipe: Pipeline) -> SentTransaction:
    """Send the commands queued on `pipe` as one MULTI/EXEC; read the replies with `.result()`."""
    return SentTransaction(redis, queued_commands(pipe))
