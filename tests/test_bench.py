"""The benchmark measures the right computation: every workload's document, run by the engine,
agrees with its hand-written TensorFlow; and the report renders from a result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from bench import report  # noqa: E402
from bench.workloads import (  # noqa: E402
    EXAMPLE_1,
    EXAMPLE_2,
    EXAMPLE_3,
    WORKLOADS,
    answer_of,
    batch_graphs,
    decode_arrays,
    disagreement,
    example_1,
    example_2,
    example_3,
    renamed,
)
from worker.engine import run_document  # noqa: E402


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_engine_agrees_with_the_hand_written_code(name: str) -> None:
    workload = WORKLOADS[name]
    for i in (0, 1):  # two cases: first-sight workloads differ between them
        doc = workload.make(i)
        want = workload.hand_for(doc)(decode_arrays(doc))
        got = answer_of(run_document(doc), doc["sources"])
        assert disagreement(got, want) is None


def test_the_batch_graphs_agree_with_the_hand_written_code() -> None:
    for name, doc in batch_graphs(9):
        want = WORKLOADS[name].hand_for(doc)(decode_arrays(doc))
        assert disagreement(answer_of(run_document(doc), doc["sources"]), want) is None


@pytest.mark.parametrize(
    ("hand", "doc", "target", "gradients"),
    [
        (example_1, EXAMPLE_1, 9.0, [6.0]),
        (example_2, EXAMPLE_2, 114.0, [np.full((2, 3), 6.0), 12.0]),
        (example_3, EXAMPLE_3, 7.0, [6.0]),
    ],
    ids=["example1", "example2", "example3"],
)
def test_the_floor_gives_the_contracts_numbers(hand: Any, doc: dict[str, Any], target: float, gradients: Any) -> None:
    got_target, got_gradients = hand(decode_arrays(doc))
    assert got_target == target
    for got, want in zip(got_gradients, gradients, strict=True):
        np.testing.assert_array_equal(got, want)


def test_renamed_documents_are_new_graphs_with_the_same_answer() -> None:
    doc = renamed(EXAMPLE_2, "s7")
    assert doc["tensors"].keys() == {"x_s7", "z_s7"}
    assert doc["expression"] == "reduce_sum(x_s7 * x_s7 + 2 * z_s7)"
    assert answer_of(run_document(doc), doc["sources"])[0] == 114.0


def test_disagreement_names_what_differs() -> None:
    want = (np.array(1.0, np.float32), [np.ones(3, np.float32)])
    assert disagreement((np.array(1.0, np.float32), [np.ones(3, np.float32)]), want) is None
    assert "gradient 0" in (disagreement((np.array(1.0, np.float32), [np.full(3, 1.1, np.float32)]), want) or "")
    assert "shape" in (disagreement((np.array(1.0, np.float32), [np.ones(2, np.float32)]), want) or "")


def test_the_naive_app_answers_with_the_hand_written_code() -> None:
    from bench.naive_app import create_app

    r = create_app().test_client().post("/v1/example2", json=EXAMPLE_2)
    assert r.status_code == 200
    body = r.get_json()
    assert body["target"]["value"] == 114.0
    assert body["gradients"]["x"]["value"] == [[6.0] * 3] * 2 and body["gradients"]["z"]["value"] == 12.0


def _mode(p50: float) -> dict[str, Any]:
    return {
        "ms": {"n": 3, "p50": p50, "p99": p50 * 2, "mean": p50, "min": p50, "max": p50 * 2},
        "samples_ms": [p50, p50, p50 * 2],
        "check": "ok",
    }


FAKE_RESULT: dict[str, Any] = {
    "started_at": "2026-01-01T00:00:00+00:00",
    "machine": {"cpu": "test CPU", "cpus": 2},
    "git": {"commit": "0" * 40, "dirty": False},
    "settings": {"plan": "quick", "workers": 1},
    "workloads": {
        "example1": {
            "title": "example 1, first sight",
            "modes": {"a": _mode(0.5), "b": _mode(1.0), "c": _mode(4.0), "d": _mode(2.0)},
        },
        "mlp": {"title": "MLP", "modes": {"a": _mode(2.0), "b": _mode(2.2)}},
        "large_json": {"title": "large, JSON", "modes": {"c": _mode(500.0), "d": _mode(2000.0)}},
        "large_b64": {"title": "large, b64", "peer": "large_json", "modes": {"c": _mode(200.0)}},
    },
    "memory": {"api_after_mb": {"master": 20.0, "workers": [40.0, 45.0], "max_worker": 45.0}, "worker_ready_s": 7.5},
}


def ms(p50: float, p99: float) -> dict[str, float]:
    return {"n": 100, "p50": p50, "p99": p99, "mean": p50, "min": p50, "max": p99}


def test_the_report_renders_targets_and_ratios(tmp_path: Path) -> None:
    markdown = report.write(FAKE_RESULT, tmp_path)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in markdown.splitlines() if line.startswith("| ")}
    assert rows["engine, contract examples, first sight"].endswith("| FAIL |")  # example1 at 2x, the others missing
    assert "1.10×" in rows["engine, MLP"] and rows["engine, MLP"].endswith("| pass |")
    assert rows["1000 × 1000 source round trip, JSON"].endswith("| 500.0 ms | pass |")
    assert rows["1000 × 1000 source round trip, b64"].endswith("| 200.0 ms | FAIL |")
    assert rows["worker ready after start (/readyz ok)"].endswith("| 7.5 s | FAIL |")
    assert rows["batch of 1,000 small graphs"].endswith("| not measured | — |")
    assert "| example 1, first sight | 2.00× | 8.00× | 4.00× | 2.00× |" in markdown
    assert report.ratios(FAKE_RESULT, "large_b64")["c/d"] == pytest.approx(0.1)  # against its peer's (d)
    assert rows["HTTP, example 3, one client"].endswith("| not measured | — |")
    looped = {**FAKE_RESULT, "one_client": {"c": ms(2.5, 9.0), "d": ms(2.0, 4.0)}}
    markdown = report.write(looped, tmp_path)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in markdown.splitlines() if line.startswith("| ")}
    assert "p50 2.50 ms, p99 9.00 ms" in rows["HTTP, example 3, one client"]
    assert rows["HTTP, example 3, one client"].endswith("| pass |")
    assert "(c)/(d): 1.25×" in markdown
    cpu = {"c": {"api": 1.0, "worker": 0.5, "client": 0.25}, "d": {"naive": 0.75, "client": 0.25}}
    markdown = report.write({**looped, "one_client_cpu_ms": cpu}, tmp_path)
    assert "- (c) api 1.00 + worker 0.50 + client 0.25 = 1.75 ms for 2.50 ms of wall time" in markdown
    assert "- (d) naive 0.75 + client 0.25 = 1.00 ms for 2.00 ms of wall time" in markdown
    assert (tmp_path / "latest.json").stat().st_size > 0
    assert (tmp_path / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cpu_time_is_read_per_process_and_a_process_gone_counts_nothing() -> None:
    import os
    import subprocess
    import sys

    from bench.harness import cpu_s

    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    gone = int(exited.stdout)  # exited and reaped: nothing left to read
    before = cpu_s([os.getpid()])
    sum(range(10_000_000))  # ~0.2 s of CPU; the clock counts in 10 ms ticks
    assert cpu_s([os.getpid()]) - before >= 0.05
    assert cpu_s([gone]) == 0.0


def test_process_trees_and_their_memory_are_read_and_a_process_gone_counts_nothing() -> None:
    import os
    import signal
    import subprocess
    import time

    from bench.harness import descendants, rss_mb, tree_rss_mb

    parent = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    kids: list[int] = []
    try:
        for _ in range(50):  # the shell forks its child within a few milliseconds
            if kids := descendants(parent.pid):
                break
            time.sleep(0.02)
        assert len(kids) == 1 and kids[0] != parent.pid
        tree = tree_rss_mb(parent.pid)
        assert set(tree["processes"]) == {str(parent.pid), str(kids[0])}
        assert tree["total"] > 0 and all(mb > 0 for mb in tree["processes"].values())
    finally:
        for kid in kids:
            os.kill(kid, signal.SIGKILL)
        parent.kill()
        parent.wait()
    assert descendants(parent.pid) == [] and rss_mb(parent.pid) == 0.0
