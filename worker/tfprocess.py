"""The long-lived TensorFlow process: started with spawn, warmed up, fed jobs over a pipe.

This is the only process that imports TensorFlow. Its parent (the RQ worker) can kill it
at any moment, for a time-out or a stop request, and start another without losing its place.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

from tapecore.errors import FieldError, InternalError, MemoryLimitExceeded, TapeserveError
from tapecore.limits import Limits

log = logging.getLogger("tapeserve.tfprocess")

# A graph with every mode's machinery, run once before the first job so that TF's kernels,
# the tape and the tracing code are loaded and the first real job pays none of it.
WARMUP_DOCS = [
    {
        "tensors": {"x": {"fill": 0.5, "shape": [4, 3]}, "w": {"fill": 0.1, "shape": [3, 2]}},
        "ops": [
            {"id": "h", "op": "matmul", "inputs": ["x", "w"]},
            {"id": "y", "op": "reduce_sum", "inputs": ["h"]},
        ],
        "target": "y",
        "sources": ["x", "w"],
        "mode": mode,
    }
    # gradient twice: its second sighting traces it, warming tf.function's machinery too.
    for mode in ("gradient", "gradient", "jacobian", "hessian")
]


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies, even mid-kernel.

    Without it, a worker killed with SIGKILL would leave this process computing its graph to
    the end (it notices the closed pipe only when it answers). Linux only; elsewhere the
    process exits at its next read or write on the pipe.
    """
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %s", ctypes.get_errno())
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


DATA_CEILING = 2  # RLIMIT_DATA is this many times the memory cap (see cap_memory)


def cap_memory(memory_limit_mb: int) -> None:
    """Have the kernel refuse private allocations past twice the cap (RLIMIT_DATA; Linux >= 4.7 counts mmap).

    The cap itself is kept by the parent, which reads this process's resident memory while a
    job runs and kills it past the cap: a clean, prompt failure. The kernel's limit is the
    ceiling behind it, above the cap because TensorFlow and glibc reserve address space
    ahead of use (at the cap itself, crossing it crashed TF in a random kernel: a segfault,
    not a problem); an allocation past it fails with ResourceExhaustedError after TF's
    allocator has retried it for 10 s. RLIMIT_AS would count the thread stacks and the
    mappings TF never writes (1.4 GB when warm, against 0.35 GB of data).
    """
    if memory_limit_mb > 0:
        ceiling = DATA_CEILING * memory_limit_mb * 2**20
        resource.setrlimit(resource.RLIMIT_DATA, (ceiling, ceiling))


def serve(
    conn: Connection, device: str | None, limits: Limits, require_gpu: bool, parent_pid: int, memory_limit_mb: int = 0
) -> None:
    """Run jobs from `conn` until it closes: each message a document, each answer a tuple.

    A batch's slots are sent one message each as they finish ("slot"), then its answer.
    """
    die_with_parent(parent_pid)
    cap_memory(memory_limit_mb)
    # Ctrl-C in a terminal signals the whole process group, and so may a supervisor's SIGTERM:
    # the parent decides when we stop (it finishes the running job first, then closes the pipe).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import orjson
    import tensorflow as tf

    from worker.engine import batch_slots, cache_stats, describe, run_json, run_task

    if require_gpu and not tf.config.list_physical_devices("GPU"):
        conn.send(("fatal", "this worker serves the gpu pool but TensorFlow sees no GPU"))
        return
    tf_device = device or ("/GPU:0" if require_gpu else "/CPU:0")
    for doc in WARMUP_DOCS:
        run_json(doc, limits=limits, device=tf_device)
    conn.send(("ready", tf_device))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if task is None:
            return
        kind, payload, check_values = task
        info: dict[str, Any] = {"mode": "?", "ops": "?"}
        try:
            doc = orjson.loads(payload) if isinstance(payload, bytes | str) else payload
            info = describe(doc)
            if kind == "batch":
                for slot in batch_slots(doc, limits=limits, device=tf_device, check_values=check_values):
                    conn.send(("slot", slot, {}))
                out = b""  # the parent joins the slots
            else:
                out = run_task(kind, doc, limits=limits, device=tf_device, check_values=check_values)
            answer: tuple[str, Any, dict[str, Any]] = ("ok", out, info)
        except MemoryError:
            no_memory = MemoryLimitExceeded(FieldError("", "Python could not allocate memory (MemoryError)"))
            answer = ("error", no_memory.problem(), info)
        except orjson.JSONDecodeError:
            not_json = InternalError([], detail="internal error: the stored request is not JSON")
            answer = ("error", not_json.problem(), info)
        except TapeserveError as exc:
            answer = ("error", exc.problem(), info)
        except Exception as exc:  # a bug in the engine: report it as one, across the pipe
            log.exception("engine bug")
            answer = ("error", InternalError([], detail=f"internal error: {type(exc).__name__}").problem(), info)
        info["cache"] = cache_stats()
        try:
            conn.send(answer)
        except OSError:
            return  # the parent is gone
