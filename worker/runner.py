"""Run request documents in a TensorFlow process this process can kill and replace.

`TensorFlowProcess` lives in the RQ worker, which never imports TensorFlow: it starts the
TensorFlow process with spawn (never fork: TF and CUDA are not fork-safe), hands it one
document at a time over a pipe, and enforces the time limit from outside, so that a graph
that hangs inside one long kernel, aborts or segfaults costs only its own job.

A crash, a time-out, a stop or going over the memory cap fails the job at once: the
replacement process is spawned before the error is raised and warms up while RQ records the
failure; the worker waits for it (`ensure_warm`) before it takes the next job, so that job
runs on a warm TensorFlow.

The memory cap is kept twice: while a job runs this process reads the TF process's resident
memory every MEMORY_SAMPLE_S and kills it past the cap; behind that, the TF process sets
RLIMIT_DATA on itself at twice the cap (an allocation past it fails: TensorFlow answers
ResourceExhaustedError, NumPy MemoryError). Either fails the job with memory-limit-exceeded.

A batch's slots come back one message each as they finish: a batch cut short by a time-out,
a crash or the memory cap keeps the slots that finished.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from typing import Any, Protocol

import orjson

from tapecore.errors import (
    FieldError,
    JobStopped,
    MemoryLimitExceeded,
    NotRun,
    RemoteProblem,
    TapeserveError,
    TimeLimitExceeded,
    WorkerCrashed,
)
from tapecore.limits import Limits
from worker import metrics

log = logging.getLogger("tapeserve.worker")

READY_TIMEOUT_S = 180.0  # importing TF and warming up takes ~5 s; a loaded host, far more
WAIT_SLICE_S = 2.0  # while waiting on TF, call `on_wait` this often (the worker heartbeats there)
REAP_TIMEOUT_S = 5.0  # a SIGKILLed process is gone within milliseconds unless the host is stuck
# While a job runs, the TF process's resident memory is read this often (one read of
# /proc/PID/statm, ~10 us): pages are touched at a few GB/s, so the cap is overshot by
# at most a few hundred MB before the kill. An idle worker reads nothing.
MEMORY_SAMPLE_S = 0.02
DEFAULT_MEMORY_LIMIT_MB = 4096  # 4 GiB: the warm TF process holds ~0.65 GB, max_memory_bytes allows 2 GiB more
WARM_SHARE_MAX = 0.9  # a cap the warm TF process (~0.65 GB resident) already fills this much of is refused
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
NOT_RUN_PROBLEM = NotRun().problem()


class StartupError(RuntimeError):
    """The TensorFlow process could not start (no GPU on a GPU worker, say)."""


class Runner(Protocol):
    """Something that runs a task ("graph" or "batch") and returns its result JSON and log facts."""

    device: str

    def run(self, kind: str, payload: Any, check_values: bool = True) -> tuple[bytes, dict[str, Any]]: ...


class TensorFlowProcess:
    """A pre-warmed TensorFlow process, replaced after a crash, a time-out or a stop.

    Spawn it from the main thread: the process asks the kernel to kill it when the thread that
    spawned it exits (PR_SET_PDEATHSIG), so that it never outlives a worker killed with SIGKILL.
    """

    def __init__(
        self, limits: Limits, *, require_gpu: bool = False, device: str | None = None, memory_limit_mb: int = 0
    ):
        self.limits = limits
        self.memory_limit_mb = memory_limit_mb  # 0: no cap
        self.require_gpu = require_gpu
        self.requested_device = device
        self.device = ""
        self.restarts = 0
        self.last_info: dict[str, Any] = {}  # what the TF process said about the last task
        # Called every WAIT_SLICE_S while a job runs or TF warms up; it must not raise.
        self.on_wait: Callable[[], None] | None = None
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: SpawnProcess | None = None
        self._conn: Connection | None = None
        self._ready = False
        self._spawned_at = 0.0
        self._lock = threading.Lock()  # `kill` comes from RQ's pubsub thread
        self._stop_requested = False
        self._over_cap_bytes = 0  # the resident memory at which the watch killed the running task

    def start(self) -> None:
        """Start the process and wait until it has TensorFlow loaded and warm; refuse a cap it leaves no room under."""
        self._spawn()
        self.ensure_warm()
        warm = _resident_bytes(f"/proc/{self.pid}/statm") if self.pid else 0
        if self.memory_limit_mb and warm > self.memory_limit_mb * 2**20 * WARM_SHARE_MAX:
            self._discard()
            raise StartupError(
                f"the warm TensorFlow process holds {warm / 2**20:.0f} MiB: a memory cap of {self.memory_limit_mb} MiB"
                " leaves no room for a job (tf_memory_limit_mb)"
            )

    @property
    def warm(self) -> bool:
        """Whether the process is alive and has said it is ready."""
        return self._ready and self._proc is not None and self._proc.is_alive()

    def ensure_warm(self) -> None:
        """Return once a live process has TensorFlow warm, replacing a dead one first."""
        if self._proc is None:
            self._replace("it was not running")
        elif self._ready and not self._proc.is_alive():
            self._replace(f"it had exited: {_exit_text(self._proc.exitcode)}")
        if self._ready:
            return
        assert self._conn is not None and self._proc is not None
        proc, conn = self._proc, self._conn
        deadline = self._spawned_at + READY_TIMEOUT_S
        while not conn.poll(max(0.0, min(WAIT_SLICE_S, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                self._discard()
                raise StartupError(f"TensorFlow did not get ready within {READY_TIMEOUT_S:.0f} s")
            self._waiting()
        try:
            kind, detail = conn.recv()
        except (EOFError, OSError):
            proc.join(REAP_TIMEOUT_S)
            code = proc.exitcode
            self._discard()
            raise StartupError(f"the TensorFlow process exited while starting ({_exit_text(code)})") from None
        if kind != "ready":
            self._discard()
            raise StartupError(detail)
        self.device = detail
        self._ready = True
        log.info("TensorFlow process %s ready on %s", proc.pid, self.device)

    def run(self, kind: str, payload: Any, check_values: bool = True) -> tuple[bytes, dict[str, Any]]:
        """Run one task (JSON text or parsed); raise the job's problem, a time-out, a crash or a stop.

        Returns the result as JSON text and what the log line says about the task.
        A batch cut short by a time-out, a crash or the memory cap answers with the slots
        that finished, the failing slot's problem, and "not run" for the rest.
        """
        self.ensure_warm()
        self._stop_requested = False
        assert self._conn is not None and self._proc is not None
        conn = self._conn
        started = time.monotonic()
        slots: list[bytes] = []
        try:
            conn.send((kind, payload, check_values))
            done, answer, out, info = self._collect(conn, started + self.limits.time_limit_s, slots)
        except (EOFError, OSError):
            done, answer, out, info = True, "died", None, {}
        except BaseException:
            # RQ's own time-out (SIGALRM) or a cold shutdown interrupted the wait: the process
            # is still busy with this document and cannot take the next one. The next `run`
            # (if there is one) starts another.
            self._discard()
            raise
        self.last_info = info
        try:
            self._raise_failure(done, answer, out, started)
        except (TimeLimitExceeded, WorkerCrashed, MemoryLimitExceeded) as exc:
            if kind == "batch":
                return _cut_short(payload, slots, exc), info
            raise
        if kind == "batch":
            return b'{"results":[' + b",".join(slots) + b"]}", info
        return out, info

    def _raise_failure(self, done: bool, answer: str, out: Any, started: float) -> None:
        """Raise what ended a task that did not answer "ok", replacing the process where it must go."""
        if done and answer != "died":
            self._over_cap_bytes = 0  # it answered before the watch's kill landed: the answer stands
        if not done:
            self._replace("time limit")
            elapsed = time.monotonic() - started
            limit = self.limits.time_limit_s
            raise TimeLimitExceeded(
                FieldError("", f"the graph ran {elapsed:.1f} s, past the limit time_limit_s = {limit:g}")
            )
        if answer == "died":
            assert self._proc is not None
            self._proc.join(REAP_TIMEOUT_S)
            code = self._proc.exitcode
            if self._over_cap_bytes:
                over, self._over_cap_bytes = self._over_cap_bytes, 0
                self._replace("memory cap")
                over_mb = -(-over // 2**20)  # rounded up: past the cap, never equal to it
                raise self._memory_problem(f"resident memory reached {over_mb} MiB", over_mb)
            if self._stop_requested:
                self._replace("stopped on request")
                raise JobStopped(FieldError("", "the job was canceled while it ran"))
            self._replace(f"it crashed: {_exit_text(code)}")
            raise WorkerCrashed(
                FieldError("", f"the TensorFlow process died while running this graph ({_exit_text(code)})"),
                detail=f"the worker crashed while running this graph ({_exit_text(code)})",
            )
        if answer == "error":
            problem = RemoteProblem(out)
            if problem.kind == MemoryLimitExceeded.kind:
                # TensorFlow (or NumPy) could not allocate under the cap: its heap is left
                # fragmented and near the cap, so the next job gets a fresh process.
                self._replace("memory cap")
                raise self._memory_problem(problem.errors[0].message if problem.errors else problem.detail)
            raise problem

    def _memory_problem(self, what: str, reached_mb: int | None = None) -> MemoryLimitExceeded:
        """The job's problem when its TF process went over the cap (or TF could not allocate)."""
        cap = (
            f"the TensorFlow process's memory cap of {self.memory_limit_mb} MiB (tf_memory_limit_mb)"
            if self.memory_limit_mb
            else "the memory this host could give the TensorFlow process"
        )
        limit = "tf_memory_limit_mb" if self.memory_limit_mb else None
        return MemoryLimitExceeded(
            FieldError("", f"{what}, over {cap}", limit=limit, maximum=self.memory_limit_mb, estimate=reached_mb),
            detail=f"the graph needed more memory than {cap}; it was stopped and not retried",
        )

    def kill(self) -> None:
        """Stop the running job now (a stop request): kill the process; `run` replaces it."""
        with self._lock:
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
            self._proc.join(REAP_TIMEOUT_S)
        self._discard()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _collect(self, conn: Connection, deadline: float, slots: list[bytes]) -> tuple[bool, str, Any, dict[str, Any]]:
        """Read a task's answer, after its batch slots (kept in `slots`); (False, ...) at `deadline`."""
        while True:
            if not self._wait_for_answer(conn, deadline):
                return False, "", None, {}
            answer, out, info = conn.recv()
            if answer != "slot":
                return True, answer, out, info
            slots.append(out)

    def _wait_for_answer(self, conn: Connection, deadline: float) -> bool:
        """Wait until the process answers, dies or is killed over its memory cap: True; or until `deadline`: False."""
        watch = self.memory_limit_mb > 0 and self._proc is not None
        cap = self.memory_limit_mb * 2**20
        statm = f"/proc/{self._proc.pid}/statm" if self._proc is not None else ""
        next_beat = time.monotonic() + WAIT_SLICE_S
        while True:
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                return False
            if conn.poll(min(left, MEMORY_SAMPLE_S if watch else WAIT_SLICE_S)):
                return True
            if watch and (resident := _resident_bytes(statm)) > cap:
                self._over_cap_bytes = resident
                with self._lock:
                    if self._proc is not None:
                        self._proc.kill()
                return True  # the pipe reads as closed: `run` sees the death and why
            if not watch or time.monotonic() >= next_beat:
                next_beat = time.monotonic() + WAIT_SLICE_S
                self._waiting()

    def _waiting(self) -> None:
        if self.on_wait is not None:
            self.on_wait()

    def _spawn(self) -> None:
        """Start a TensorFlow process without waiting for it: it warms up meanwhile."""
        from worker.tfprocess import serve  # imports no TensorFlow at module level

        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=serve,
            args=(child, self.requested_device, self.limits, self.require_gpu, os.getpid(), self.memory_limit_mb),
            name="tapeserve-tensorflow",
            daemon=True,
        )
        proc.start()
        child.close()
        self._proc, self._conn, self._ready = proc, parent, False
        self._spawned_at = time.monotonic()

    def _discard(self) -> None:
        """Kill the process (if alive) and forget it."""
        with self._lock:
            if self._proc is not None:
                if self._proc.is_alive():
                    self._proc.kill()
                self._proc.join(REAP_TIMEOUT_S)
            if self._conn is not None:
                self._conn.close()
            self._proc = self._conn = None
            self._ready = False

    def _replace(self, why: str) -> None:
        """Kill the process and spawn its replacement, without waiting for it to warm up."""
        self._discard()
        self.restarts += 1
        metrics.TF_RESTARTS.labels(why.split(":")[0]).inc()
        log.warning("restarting the TensorFlow process (%s)", why)
        self._spawn()


def _resident_bytes(statm: str) -> int:
    """The resident memory of a process, from /proc/PID/statm (0 once it is gone)."""
    try:
        with open(statm, "rb") as f:
            return int(f.read().split()[1]) * PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return 0


def _cut_short(payload: Any, slots: list[bytes], exc: TapeserveError) -> bytes:
    """The document of a batch stopped at slot len(slots): the finished slots, its problem, the rest not run.

    Slots the API refused arrive as problems in the request: they keep their own.
    """
    items = orjson.loads(payload) if isinstance(payload, bytes | str) else payload
    rest = [
        orjson.dumps({"status": "failed", "error": item["problem"] if "problem" in item else NOT_RUN_PROBLEM})
        for item in items[len(slots) + 1 :]
    ]
    stopped = orjson.dumps({"status": "failed", "error": exc.problem()})
    return b'{"results":[' + b",".join([*slots, stopped, *rest][: len(items)]) + b"]}"


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
        self.limits = limits
        self.device = device or "/CPU:0"

    def run(self, kind: str, payload: Any, check_values: bool = True) -> tuple[bytes, dict[str, Any]]:
        import orjson

        from worker.engine import describe, run_task

        doc = orjson.loads(payload) if isinstance(payload, bytes | str) else payload
        info = describe(doc)
        return run_task(kind, doc, limits=self.limits, device=self.device, check_values=check_values), info
