"""Run request documents in a TensorFlow process this process can kill and replace.

`TensorFlowProcess` lives in the RQ worker, which never imports TensorFlow: it starts the
TensorFlow process with spawn (never fork: TF and CUDA are not fork-safe), hands it one
document at a time over a pipe, and enforces the time limit from outside, so that a graph
that hangs inside one long kernel, aborts or segfaults costs only its own job.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from typing import Any, Protocol

from worker.graph.errors import FieldError, JobStopped, RemoteProblem, TimeLimitExceeded, WorkerCrashed
from worker.graph.limits import Limits

log = logging.getLogger("tapeserve.worker")

READY_TIMEOUT_S = 180.0  # importing TF and warming up takes ~5 s; a loaded host, far more


class StartupError(RuntimeError):
    """The TensorFlow process could not start (no GPU on a GPU worker, say)."""


class Runner(Protocol):
    """Something that turns a request document into a result document."""

    device: str

    def run(self, doc: Any) -> dict[str, Any]: ...


class TensorFlowProcess:
    """A pre-warmed TensorFlow process, restarted after a crash, a time-out or a stop."""

    def __init__(self, limits: Limits, *, require_gpu: bool = False, device: str | None = None):
        self.limits = limits
        self.require_gpu = require_gpu
        self.requested_device = device
        self.device = ""
        self.restarts = 0
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: SpawnProcess | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self._stop_requested = False

    def start(self) -> None:
        """Start the process and wait until it has TensorFlow loaded and warm."""
        parent, child = self._ctx.Pipe()
        from worker.tfprocess import serve  # imports no TensorFlow at module level

        proc = self._ctx.Process(
            target=serve,
            args=(child, self.requested_device, self.limits, self.require_gpu),
            name="tapeserve-tensorflow",
            daemon=True,
        )
        proc.start()
        child.close()
        if not parent.poll(READY_TIMEOUT_S):
            proc.kill()
            raise StartupError(f"TensorFlow did not get ready within {READY_TIMEOUT_S:.0f} s")
        try:
            kind, detail = parent.recv()
        except EOFError:
            raise StartupError(f"the TensorFlow process exited while starting ({proc.exitcode})") from None
        if kind != "ready":
            proc.join(5)
            raise StartupError(detail)
        self.device = detail
        self._proc, self._conn = proc, parent
        log.info("TensorFlow process %s ready on %s", proc.pid, self.device)

    def run(self, doc: Any) -> dict[str, Any]:
        """Run one document; raise the job's problem, a time-out, a crash or a stop."""
        if self._proc is None or not self._proc.is_alive():
            self._restart("it was not running")
        assert self._conn is not None and self._proc is not None
        self._stop_requested = False
        limit = self.limits.time_limit_s
        started = time.monotonic()
        try:
            self._conn.send(doc)
            ready = self._conn.poll(limit)
            if ready:
                kind, payload = self._conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            ready, kind, payload = True, "died", None
        if not ready:
            self._restart("time limit")
            elapsed = time.monotonic() - started
            raise TimeLimitExceeded(
                FieldError("", f"the graph ran {elapsed:.1f} s, past the limit time_limit_s = {limit:g}")
            )
        if kind == "died":
            if self._stop_requested:
                self._restart("stopped on request")
                raise JobStopped(FieldError("", "the job was canceled while it ran"))
            self._proc.join(1)
            code = self._proc.exitcode
            self._restart("crash")
            raise WorkerCrashed(
                FieldError("", f"the TensorFlow process died while running this graph ({_exit_text(code)})"),
                detail=f"the worker crashed while running this graph ({_exit_text(code)})",
            )
        if kind == "error":
            raise RemoteProblem(payload)
        return dict(payload)

    def kill(self) -> None:
        """Stop the running job now (a stop request): kill the process; `run` restarts it."""
        self._stop_requested = True
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()

    def close(self) -> None:
        """Ask the process to exit, and kill it if it does not."""
        if self._conn is not None:
            try:
                self._conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        if self._proc is not None:
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
        self._proc = self._conn = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _restart(self, why: str) -> None:
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join()
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None
        self.restarts += 1
        log.warning("restarting the TensorFlow process (%s)", why)
        self.start()


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class InProcessRunner:
    """Run documents in this process: for tests and the benchmark, not for strangers' graphs."""

    def __init__(self, limits: Limits, device: str | None = None):
        from worker.engine import run_document

        self._run = run_document
        self.limits = limits
        self.device = device or "/CPU:0"

    def run(self, doc: Any) -> dict[str, Any]:
        return self._run(doc, limits=self.limits, device=self.device)
