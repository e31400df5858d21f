"""The worker's backstops, for when the validator's estimate is wrong: the TensorFlow process's
memory cap, results over max_result_bytes refused where they are written, a full Redis waited
out, and a batch that keeps the slots that finished.

The end-to-end tests run the real processes (redis-server, gunicorn, `python -m worker`), as
tests/test_faults.py does, and share its stack builder. Measured times are printed with a
MEASURED prefix (`pytest -s` shows them).
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest
import requests
from redis import Redis
from redis.exceptions import OutOfMemoryError

from tapecore.errors import LimitExceeded
from tapecore.limits import Limits
from tests.conftest import InProcessWorker, free_port, wait_until
from tests.examples import EXAMPLE_1, EXAMPLE_3
from tests.test_faults import (
    FaultStack,
    assert_next_request_succeeds,
    build_stack,
    job_lines,
    matmul_chain,
    post_async,
    run_seconds,
    tear_down,
    wait_for_status,
)

# Resident memory of the graph below at its peak: ~1.45 GB, where the warm TF process holds
# ~0.65 GB; it reaches the 1200 MiB cap in about half a second.
MEMORY_CAP_MB = 1200
MEMORY_HOG = {
    "tensors": {"x": {"fill": 0.5, "shape": [4096, 4096]}, "s": 1.0},
    "expression": "reduce_sum(sin(x * s) * cos(x * s) * exp(x * s) * tanh(x * s))",
    "sources": ["s"],
}
BACKSTOP_LIMIT_S = 6.0  # the stack's time limit: a slow batch slot is cut here
# 80 chained 2500x2500 matmuls (0.08 s each on this host's fastest CPUs: past the time limit)
# of a tensor the source does not depend on: nothing is kept for a backward pass, only the
# chain's outputs (2 GB at most), under the default memory cap.
SLOW_SMALL_GRAPH = {
    "tensors": {"a": {"fill": 0.001, "shape": [2500, 2500]}, "s": 2.0},
    "expression": f"reduce_sum({matmul_chain(80)}) + s",
    "sources": ["s"],
}
# 6 chained matmuls: 0.5 s at the fastest, ~4 s at the slowest, with a scalar answer.
SHORT_GRAPH = {**SLOW_SMALL_GRAPH, "expression": f"reduce_sum({matmul_chain(6)} * s)"}
# The validator's cost model, raised so that MEMORY_HOG and SLOW_SMALL_GRAPH reach the TF
# process: the backstops are what these tests are about. Both the API and the worker read these.
RAISED_LIMITS = {
    "TAPESERVE_MAX_MEMORY_BYTES": str(2**40),
    "TAPESERVE_MAX_FLOPS": str(2**60),
    "TAPESERVE_MAX_TOTAL_ELEMENTS": str(2**36),
}
GRAPH_ERRORS = "/problems/"


# -- results over max_result_bytes, refused in the engine (no processes) ----------------------------


def test_a_result_of_empty_rows_is_refused_before_it_is_written() -> None:
    from worker.engine import encode_within

    # 33,554,432 empty rows: 100 MB of "[]," from a result that holds no number at all.
    empty = {"gradients": {"x": {"value": np.zeros((33_554_432, 0), np.float32), "dtype": "float32"}}}
    started = time.perf_counter()
    with pytest.raises(LimitExceeded) as refused:
        encode_within(empty, 64 * 2**20)
    took = time.perf_counter() - started
    assert took < 0.1, f"{took:.3f} s: the rows were written before the refusal"
    item = refused.value.errors[0]
    assert (item.limit, item.maximum, item.estimate) == ("max_result_bytes", 64 * 2**20, 100663306)
    message = item.message
    # 3 bytes a row and for the outer list, and the dtype's 7 letters
    assert message == "the result is at least 100663306 bytes as JSON, over the limit max_result_bytes = 67108864"


def test_a_result_over_max_result_bytes_once_written_is_refused() -> None:
    from worker.engine import encode_within

    values = np.full(100, 0.123456789, np.float64)  # ~20 bytes each as JSON, 2 at least
    result = {"gradients": {"x": {"value": values, "dtype": "float64", "shape": [100]}}}
    written = len(encode_within(result, 10**6))
    assert written > 1_000
    with pytest.raises(LimitExceeded) as refused:
        encode_within(result, 1_000)
    assert refused.value.errors[0].message == (
        f"the result is {written} bytes as JSON, over the limit max_result_bytes = 1000"
    )


def test_a_batch_whose_results_together_pass_max_result_bytes_fails_the_slots_that_do_not_fit() -> None:
    from worker.engine import run_batch_json

    graph = {"tensors": {"x": {"fill": 1.0, "shape": [100]}}, "expression": "reduce_sum(x * x)", "sources": ["x"]}
    # The validator lets each graph through (it estimates 3.8 kB for one); each result is
    # ~620 bytes, so about six fit together.
    limit = 4_000
    results = orjson.loads(run_batch_json([{"graph": graph}] * 8, limits=Limits(max_result_bytes=limit)))["results"]
    statuses = [r["status"] for r in results]
    fitted = statuses.count("finished")
    assert 2 <= fitted < 8 and statuses == ["finished"] * fitted + ["failed"] * (8 - fitted)
    assert sum(len(orjson.dumps(r)) + 1 for r in results[:fitted]) <= limit
    assert results[0]["result"]["gradients"]["x"]["value"] == [2.0] * 100
    for failed in results[fitted:]:
        assert failed["error"]["type"] == GRAPH_ERRORS + "limit-exceeded"
        message = failed["error"]["errors"][0]["message"]
        assert re.fullmatch(
            r"with this result \((at least )?\d+ bytes\) the batch's results are (at least )?\d+ bytes as JSON,"
            r" over the limit max_result_bytes = 4000",
            message,
        ), message


# -- the real processes --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    """One worker whose TensorFlow process is capped at MEMORY_CAP_MB, behind the API."""
    env = {
        **RAISED_LIMITS,
        "TAPESERVE_TF_MEMORY_LIMIT_MB": str(MEMORY_CAP_MB),
        "TAPESERVE_TIME_LIMIT_S": f"{BACKSTOP_LIMIT_S:g}",
    }
    fs = build_stack(tmp_path_factory.mktemp("capped"), 1, **env)
    try:
        yield fs
    finally:
        tear_down(fs)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    """One worker with the default memory cap, behind the API, on its own redis-server."""
    env = {**RAISED_LIMITS, "TAPESERVE_TIME_LIMIT_S": f"{BACKSTOP_LIMIT_S:g}"}
    fs = build_stack(tmp_path_factory.mktemp("plain"), 1, **env)
    try:
        yield fs
    finally:
        tear_down(fs)


def post_batch(fs: FaultStack, graphs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """POST the graphs as a batch and wait for its results."""
    answer = requests.post(
        f"{fs.stack.base}/v1/batches", json={"graphs": graphs}, headers={"Prefer": "wait=60"}, timeout=90
    )
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert doc["status"] == "finished", doc
    return list(doc["result"]["results"])


@pytest.mark.e2e
def test_a_graph_over_the_memory_cap_fails_once_with_its_own_problem_then_a_fresh_process_serves(
    capped: FaultStack,
) -> None:
    fs = capped
    old_tf = fs.tf_pid(0)
    location, job_id = post_async(fs.stack, MEMORY_HOG)
    doc = wait_for_status(fs.stack, location, "failed", 60)
    ran = run_seconds(doc)
    print(f"MEASURED memory cap: a job over the {MEMORY_CAP_MB} MiB cap failed after {ran:.2f} s")
    assert ran <= BACKSTOP_LIMIT_S
    error = doc["error"]
    assert error["status"] == 422
    assert error["type"] == GRAPH_ERRORS + "memory-limit-exceeded"
    assert error["title"] == "The graph needed more memory than the worker allows"
    assert error["detail"] == (
        f"the graph needed more memory than the TensorFlow process's memory cap of {MEMORY_CAP_MB} MiB"
        " (tf_memory_limit_mb); it was stopped and not retried"
    )
    item = error["errors"][0]
    assert (item["limit"], item["maximum"]) == ("tf_memory_limit_mb", MEMORY_CAP_MB)
    assert MEMORY_CAP_MB < item["estimate"] < MEMORY_CAP_MB + 256  # what the watch read, in MiB
    assert job_lines(fs, job_id)[0].endswith("outcome=memory-limit-exceeded")
    job = fs.job(job_id)
    assert len(job.results()) == 1  # run once, failed once
    # Replaced by a fresh process, warm before the next job, which succeeds on it.
    fs.tf_pid(0, other_than=old_tf)
    assert_next_request_succeeds(fs.stack)
    assert fs.workers[0].poll() is None


@pytest.mark.e2e
def test_a_batch_keeps_the_slots_that_finished_when_one_goes_over_the_memory_cap(capped: FaultStack) -> None:
    fs = capped
    old_tf = fs.tf_pid(0)
    results = post_batch(fs, [EXAMPLE_3, MEMORY_HOG, EXAMPLE_1])
    assert [r["status"] for r in results] == ["finished", "failed", "failed"]
    assert results[0]["result"]["gradients"]["x"]["value"] == 6.0
    assert results[1]["error"]["type"] == GRAPH_ERRORS + "memory-limit-exceeded"
    assert results[2]["error"]["type"] == GRAPH_ERRORS + "not-run"
    fs.tf_pid(0, other_than=old_tf)
    assert_next_request_succeeds(fs.stack)


@pytest.mark.e2e
def test_a_batch_keeps_the_slots_that_finished_when_one_runs_out_of_time(plain: FaultStack) -> None:
    fs = plain
    started = time.monotonic()
    results = post_batch(fs, [EXAMPLE_1, {"tensors": {}}, EXAMPLE_3, SLOW_SMALL_GRAPH, EXAMPLE_1])
    took = time.monotonic() - started
    print(f"MEASURED batch cut by the {BACKSTOP_LIMIT_S:g} s time limit: answered in {took:.1f} s")
    assert took <= BACKSTOP_LIMIT_S + 5  # the queueing and the answer, on top of the time limit
    assert [r["status"] for r in results] == ["finished", "failed", "finished", "failed", "failed"]
    assert results[0]["result"]["gradients"]["x"]["value"] == 6.0
    assert results[1]["error"]["type"] == GRAPH_ERRORS + "invalid-graph"  # refused by the API
    assert results[2]["result"]["gradients"]["x"]["value"] == 6.0
    assert results[3]["error"]["type"] == GRAPH_ERRORS + "time-limit-exceeded"
    assert results[4]["error"]["type"] == GRAPH_ERRORS + "not-run"
    assert_next_request_succeeds(fs.stack)


@pytest.mark.e2e
def test_a_batch_keeps_the_slots_that_finished_when_its_tensorflow_process_is_killed(plain: FaultStack) -> None:
    fs = plain
    tf = fs.tf_pid(0)
    answer = requests.post(
        f"{fs.stack.base}/v1/batches",
        json={"graphs": [EXAMPLE_3, SLOW_SMALL_GRAPH, EXAMPLE_1]},
        headers={"Prefer": "respond-async"},
        timeout=30,
    )
    assert answer.status_code == 202, answer.text
    location = answer.headers["Location"]
    wait_for_status(fs.stack, location, "started", 60)
    time.sleep(0.5)  # the first slot is done, the second inside its kernels
    os.kill(tf, signal.SIGKILL)
    doc = wait_for_status(fs.stack, location, "finished", 30)
    results = doc["result"]["results"]
    assert [r["status"] for r in results] == ["finished", "failed", "failed"]
    assert results[0]["result"]["gradients"]["x"]["value"] == 6.0
    assert results[1]["error"]["type"] == GRAPH_ERRORS + "worker-crashed"
    assert results[1]["error"]["detail"] == "the worker crashed while running this graph (killed by SIGKILL)"
    assert results[2]["error"]["type"] == GRAPH_ERRORS + "not-run"
    fs.tf_pid(0, other_than=tf)
    assert_next_request_succeeds(fs.stack)


# -- Redis full ------------------------------------------------------------------------------------


FILLERS = 64  # keys of 64 KiB: 4 MiB


def fill(client: Redis) -> None:
    """Make Redis full: write 4 MiB, then set maxmemory 1 MiB under what it holds (noeviction).

    Redis refuses a write only while its memory is over maxmemory, and its memory moves by
    a few KiB between commands: 1 MiB over, every write is refused until the fillers go.
    """
    for i in range(FILLERS):
        client.set(f"filler:{i}", b"x" * 65536)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", str(int(client.info("memory")["used_memory"]) - 2**20))
    with pytest.raises(OutOfMemoryError):
        client.set("one-more", b"x")


@pytest.mark.e2e
def test_a_full_or_read_only_redis_is_waited_out_and_the_job_outcome_recorded(plain: FaultStack) -> None:
    fs = plain
    client = fs.redis.client()
    try:
        worker, tf = fs.workers[0], fs.tf_pid(0)
        # A job that runs half a second or more; Redis fills up meanwhile, so its result is refused.
        location, job_id = post_async(fs.stack, SHORT_GRAPH)
        wait_for_status(fs.stack, location, "started", 60)
        fill(client)
        wait_until(lambda: job_lines(fs, job_id) != [], 60, "the job to end")
        time.sleep(3)  # the worker now waits for room to write the job's failure
        assert worker.poll() is None, "the worker exited on a full Redis"
        assert fs.stack.get(location).json()["status"] == "started"
        messages = [r["message"] for r in fs.records(0)]
        assert any(m.startswith(f"job {job_id}: Redis is full") for m in messages), messages
        assert any(m.startswith(f"job {job_id}: outcome not recorded (OutOfMemoryError") for m in messages)
        freed = time.monotonic()
        client.delete(*[f"filler:{i}" for i in range(FILLERS)])
        doc = wait_for_status(fs.stack, location, "failed", 30)
        print(
            f"MEASURED full Redis: the job's failure was written {time.monotonic() - freed:.1f} s after room was made"
        )
        error = doc["error"]
        assert error["type"] == GRAPH_ERRORS + "result-not-stored"
        assert error["status"] == 503
        assert error["detail"] == "the result could not be stored: the job store is full; send the request again later"
        # The same worker and TensorFlow process go on.
        assert_next_request_succeeds(fs.stack)
        assert worker.poll() is None and fs.tf_pid(0) == tf

        # A failover: Redis is a replica (read-only) when the job ends; once it is primary
        # again (the job still in it), the worker records the job's result.
        location, job_id = post_async(fs.stack, SHORT_GRAPH)
        wait_for_status(fs.stack, location, "started", 60)
        client.replicaof("127.0.0.1", str(free_port()))  # no primary there: it keeps its data
        wait_until(lambda: job_lines(fs, job_id) != [], 60, "the job to end")
        time.sleep(1)
        assert worker.poll() is None and fs.stack.get(location).json()["status"] == "started"
        messages = [r["message"] for r in fs.records(0)]
        assert any(m.startswith(f"job {job_id}: outcome not recorded (ReadOnlyError") for m in messages)
        client.replicaof("NO", "ONE")
        doc = wait_for_status(fs.stack, location, "finished", 30)
        assert doc["result"]["gradients"]["s"]["shape"] == []
        assert_next_request_succeeds(fs.stack)
    finally:
        client.delete(*[f"filler:{i}" for i in range(FILLERS)])
        client.replicaof("NO", "ONE")
        client.config_set("maxmemory", "0")
        client.close()


def test_a_big_result_is_kept_for_the_big_result_ttl(redis: Redis, client: Any, worker: InProcessWorker) -> None:
    from rq import Queue

    from tapecore.protocol import POOL_QUEUES, OrjsonSerializer, queue_name
    from worker.tapeworker import TapeJob, TapeWorker

    worker.register()  # so that the API queues
    big = {"tensors": {"x": {"fill": 1.0, "shape": [1000]}}, "expression": "reduce_sum(x * x)", "sources": ["x"]}
    ids = []
    for doc in (EXAMPLE_1, big):
        r = client.post("/v1/gradients", json=doc, headers={"Prefer": "respond-async"})
        assert r.status_code == 202, r.get_json()
        ids.append(r.get_json()["id"])
    queues = [Queue(queue_name(q), connection=redis, serializer=OrjsonSerializer) for q in POOL_QUEUES["cpu"]]
    big_result_worker = TapeWorker(
        queues,
        connection=redis,
        serializer=OrjsonSerializer,
        job_class=TapeJob,
        big_result_bytes=2_000,  # the big result is ~7 KB of JSON, the small one ~150 bytes
        big_result_ttl_s=7,
    )
    big_result_worker.work(burst=True, logging_level="WARNING")
    small_ttl, big_ttl = (redis.ttl(f"rq:results:{i}") for i in ids)
    assert 7 < small_ttl <= 3600
    assert 0 < big_ttl <= 7
    assert 0 < redis.ttl(f"rq:job:{ids[1]}") <= 7
    assert client.get(f"/v1/jobs/{ids[1]}").get_json()["result"]["gradients"]["x"]["value"] == [2.0] * 1000
