"""`python -m bench`: hand-written TensorFlow, the engine, the service and the naive app, side by side.

One run starts its own redis-server, API (gunicorn), worker(s) and naive app on free ports,
measures every workload in the four modes, taking turns case by case, stops them all, and writes
bench/results/latest.{json,md,png}. `--quick` takes one to two minutes on the 2-core host.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# TensorFlow is imported here, before any process under test starts, so that its import does
# not compete with theirs for the two cores while the worker's start-up time is measured.
from bench import report  # noqa: E402
from bench.harness import (  # noqa: E402
    Client,
    HttpError,
    Stack,
    Timing,
    cpu_s,
    descendants,
    git_info,
    hammer,
    machine_info,
    rss_mb,
    summarize,
    time_interleaved,
    tree_rss_mb,
)
from bench.workloads import (  # noqa: E402
    EXAMPLE_3,
    WORKLOADS,
    Answer,
    Workload,
    answer_of,
    batch_graphs,
    decode_arrays,
    disagreement,
)
from worker.engine import run_document  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BATCH_WARMUP = 30  # graphs sent once before the timed batches: kernels warm, structures seen
IDLE_SETTLE_S = 1.0  # let freshly started processes finish their start-up before reading RSS


@dataclass(frozen=True)
class Plan:
    """How long each part runs: (warm-up, timed) iterations by workload kind, and the load tests."""

    iterations: dict[str, tuple[int, int]]
    budget_s: float  # of timed iterations per mode and workload: a slow mode stops early
    seconds: float  # of the concurrent-clients test, per mode
    batch_runs: int  # timed batches per mode
    one_client: tuple[int, int]  # (rounds, requests per block) of the back-to-back single client
    clients: int = 16
    batch_size: int = 1_000


PLANS = {
    "full": Plan({"small": (5, 200), "medium": (5, 100), "chain": (3, 30), "large": (1, 5)}, 10.0, 10.0, 3, (10, 100)),
    "quick": Plan({"small": (3, 40), "medium": (3, 20), "chain": (3, 8), "large": (0, 2)}, 3.0, 3.0, 1, (4, 50)),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations, shorter load: 1-2 minutes")
    parser.add_argument("--workers", type=int, default=1, help="`python -m worker` processes to start (default 1)")
    parser.add_argument("--clients", type=int, help="concurrent clients of the load test (default 16)")
    parser.add_argument("--seconds", type=float, help="duration of the load test per mode")
    parser.add_argument("--only", nargs="+", choices=sorted(WORKLOADS), help="measure only these workloads")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest.{json,md,png} go")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = PLANS["quick" if args.quick else "full"]
    plan = dataclasses.replace(plan, clients=args.clients or plan.clients, seconds=args.seconds or plan.seconds)
    started = time.monotonic()
    result: dict[str, Any] = {
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "git": git_info(),
        "settings": {"plan": "quick" if args.quick else "full", "workers": args.workers, **dataclasses.asdict(plan)},
        "workloads": {},
        "memory": {},
    }
    with Stack() as stack:
        stack.start_redis()
        api_base = stack.start_api()
        started_workers = stack.start_workers(args.workers, api_base)
        result["memory"]["worker_ready_s"] = started_workers["ready_s"]
        result["memory"]["worker_registered_s"] = started_workers["registered_s"]
        naive_base = stack.start_naive()
        time.sleep(IDLE_SETTLE_S)
        result["memory"]["worker_idle_mb"] = [tree_rss_mb(p.pid) for p in stack.by_name("worker")]
        result["memory"]["api_idle_mb"] = api_rss(stack)
        api, naive = Client(api_base), Client(naive_base)
        result["http_floor_ms"] = {"c": api.get_ms("/healthz", 50), "d": naive.get_ms("/healthz", 50)}
        for name in args.only or list(WORKLOADS):
            entry = measure_workload(WORKLOADS[name], plan, api, naive)
            result["workloads"][name] = entry
            progress(name, entry["modes"])
        if not args.only or "example3_repeat" in args.only:
            result["one_client"], result["one_client_cpu_ms"] = back_to_back(api, naive, plan, stack.roles())
            progress("one client", {m: {"ms": r} for m, r in result["one_client"].items()})
        if not args.only:
            result["concurrency"] = {
                "c": hammer(api_base + "/v1/gradients", EXAMPLE_3, plan.clients, plan.seconds),
                "d": hammer(naive_base + "/v1/example3", EXAMPLE_3, plan.clients, plan.seconds),
            }
            progress("concurrency", {m: {"ms": r["latency_ms"]} for m, r in result["concurrency"].items()})
            result["batch"] = measure_batch(plan, api, naive)
            progress("batch", result["batch"]["modes"])
        # Last, because the worker runs these jobs after the answers have come back.
        result["http_floor_ms"]["c_enqueue"] = api.enqueue_ms("/v1/gradients", EXAMPLE_3, 50)
        result["memory"]["api_after_mb"] = api_rss(stack)
        result["memory"]["worker_after_mb"] = [tree_rss_mb(p.pid) for p in stack.by_name("worker")]
        result["logs"] = str(stack.logdir)
    result["engine_cache"] = engine_cache_stats()
    result["elapsed_s"] = time.monotonic() - started
    result["machine"]["load_average_end"] = list(os.getloadavg())
    for name in result["workloads"]:
        result["workloads"][name]["ratios"] = report.ratios(result, name)
    print(report.write(result, args.out))
    return 0


def measure_workload(w: Workload, plan: Plan, api: Client, naive: Client) -> dict[str, Any]:
    """Time one workload in the four modes, taking turns on the same documents; check each answer."""
    warm, n = plan.iterations[w.kind]
    docs = [w.make(i) for i in range(warm + n)]
    prepared = [(w.hand_for(d), decode_arrays(d)) for d in docs]  # the floor gets arrays, as a TF user has
    sources = docs[warm]["sources"]
    want = prepared[warm][0](prepared[warm][1])
    modes: dict[str, tuple[Callable[[Any], Any], list[Any]]] = {
        "a": (lambda case: case[0](case[1]), prepared),
        "b": (run_document, docs),
        "c": (lambda d: api.post("/v1/gradients", d), docs),
    }
    if w.peer is None:
        modes["d"] = (lambda d: naive.post(f"/v1/{w.name}", d), docs)
    reads: dict[str, Callable[[Any], Any]] = {"b": identity, "c": lambda r: r["result"], "d": identity}
    entry: dict[str, Any] = {"title": w.title, "kind": w.kind, "warmup": warm, "modes": {}, "peer": w.peer}
    for mode, timing in time_interleaved(modes, warm, plan.budget_s).items():
        entry["modes"][mode] = mode_entry(timing)
        if mode in reads and timing.samples:
            entry["modes"][mode]["check"] = check(timing.first, reads[mode], sources, want)
    if w.peer is not None:
        entry["modes"]["d"] = {"skipped": f"the naive app speaks JSON only; its peer is {w.peer}'s (d)"}
    return entry


def back_to_back(
    api: Client, naive: Client, plan: Plan, roles: dict[str, dict[str, list[int]]]
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """Time one client sending example 3 again and again, nothing else running: (c) and (d) in blocks.

    The interleaved table runs (a), (b) and (d) between two requests to the service, so the
    service sits idle ~5 ms before each one, as it would for a client with think time; this
    is the other reading of "one client": a closed loop with none. Blocks take turns.

    Also returns the CPU time each process role spent per request (user + system, read with
    psutil): where the time of a request goes when the host's cores, not waits, bound it.
    """
    rounds, per_block = plan.one_client
    samples: dict[str, list[float]] = {"c": [], "d": []}
    cpu = {mode: dict.fromkeys(roles[mode], 0.0) for mode in samples}
    send = {"c": lambda: api.post("/v1/gradients", EXAMPLE_3), "d": lambda: naive.post("/v1/example3", EXAMPLE_3)}
    for _ in range(rounds):
        for mode, post in send.items():
            post()  # the first of a block follows the other server's block
            before = {role: cpu_s(pids) for role, pids in roles[mode].items()}
            for _ in range(per_block):
                started = time.perf_counter()
                post()
                samples[mode].append(time.perf_counter() - started)
            for role, pids in roles[mode].items():
                cpu[mode][role] += cpu_s(pids) - before[role]
    per_request = {
        mode: {role: s * 1000 / len(samples[mode]) for role, s in used.items()} for mode, used in cpu.items()
    }
    return {mode: summarize(s) for mode, s in samples.items()}, per_request


def measure_batch(plan: Plan, api: Client, naive: Client) -> dict[str, Any]:
    """Time a batch of small graphs: a loop (a, b), `POST /v1/batches` (c), one POST each (d).

    Each mode first runs a small batch (kernels warm, structures seen), then the full one in turns.
    """
    graphs = batch_graphs(plan.batch_size)
    docs = [d for _, d in graphs]
    prepared = [(WORKLOADS[name].hand_for(d), decode_arrays(d)) for name, d in graphs]
    wants = [hand(arrays) for hand, arrays in prepared]

    def batches(items: list[Any]) -> list[list[Any]]:
        return [items[:BATCH_WARMUP]] + [items] * plan.batch_runs

    modes: dict[str, tuple[Callable[[Any], Any], list[Any]]] = {
        "a": (lambda b: [hand(arrays) for hand, arrays in b], batches(prepared)),
        "b": (lambda b: [run_document(d) for d in b], batches(docs)),
        "c": (lambda b: api.post("/v1/batches", {"graphs": b}), batches(docs)),
        "d": (lambda b: [naive.post(f"/v1/{name}", d) for name, d in b], batches(graphs)),
    }
    reads: dict[str, Callable[[Any], list[Any]]] = {"b": identity, "c": batch_answers, "d": identity}
    entry: dict[str, Any] = {"graphs": len(graphs), "modes": {}}
    for mode, timing in time_interleaved(modes, 1).items():
        failure = timing.failure
        if isinstance(failure, HttpError) and failure.status in (404, 405):
            entry["modes"][mode] = {"not_available": f"POST /v1/batches answered {failure.status}"}
            continue
        entry["modes"][mode] = mode_entry(timing)
        if timing.samples:
            entry["modes"][mode]["graphs_per_s"] = len(graphs) / (summarize(timing.samples)["p50"] / 1000)
            if mode in reads:
                entry["modes"][mode]["check"] = check_many(timing.first, reads[mode], docs, wants)
    return entry


def mode_entry(timing: Timing) -> dict[str, Any]:
    """A mode's record: its statistics and samples, or what stopped it."""
    if timing.failure is not None and not timing.samples:
        return {"error": f"{type(timing.failure).__name__}: {timing.failure}"[:500]}
    out: dict[str, Any] = {"ms": summarize(timing.samples), "samples_ms": rounded(timing.samples)}
    if timing.failure is not None:
        out["stopped"] = f"{type(timing.failure).__name__}: {timing.failure}"[:500]
    return out


def batch_answers(body: Any) -> list[Any]:
    """The result documents of a batch answer (`{"results": [...]}`, bare or inside the job)."""
    results = body["results"] if "results" in body else body["result"]["results"]
    return [r["result"] if r.get("status", "finished") == "finished" else r for r in results]


def check(answer: Any, read: Callable[[Any], Any], sources: list[str], want: Answer) -> str:
    """Say "ok" when a mode's answer agrees with the hand-written code's, else what differs."""
    try:
        got = answer_of(read(answer), sources)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        return f"unreadable answer ({type(exc).__name__}: {exc})"
    return disagreement(got, want) or "ok"


def check_many(answer: Any, read: Callable[[Any], list[Any]], docs: list[dict[str, Any]], wants: list[Answer]) -> str:
    """Check every answer of a batch; say how many are wrong and what is wrong with the first."""
    try:
        results = read(answer)
    except (KeyError, TypeError) as exc:
        return f"unreadable answer ({type(exc).__name__}: {exc})"
    if len(results) != len(docs):
        return f"{len(results)} answers for {len(docs)} graphs"
    verdicts = [check(r, identity, d["sources"], w) for r, d, w in zip(results, docs, wants, strict=True)]
    bad = [(k, why) for k, why in enumerate(verdicts) if why != "ok"]
    return "ok" if not bad else f"{len(bad)} wrong, first #{bad[0][0]}: {bad[0][1]}"


def api_rss(stack: Stack) -> dict[str, Any]:
    """RSS of the gunicorn master and of each of its worker processes, in MB."""
    master = stack.by_name("api")[0].pid
    workers = [rss_mb(pid) for pid in descendants(master)]
    return {"master": rss_mb(master), "workers": workers, "max_worker": max(workers, default=0.0)}


def engine_cache_stats() -> dict[str, Any] | None:
    """The in-process engine's compiled-function cache counts, where this build has that cache."""
    try:
        from worker.engine.cache import FUNCTIONS
    except ImportError:
        return None
    return {**dataclasses.asdict(FUNCTIONS.stats), "size": len(FUNCTIONS)}


def identity(answer: Any) -> Any:
    return answer


def rounded(samples_s: list[float]) -> list[float]:
    return [round(s * 1000, 4) for s in samples_s]


def progress(name: str, modes: dict[str, Any]) -> None:
    cells = [f"{m} {v['ms']['p50']:.2f} ms" if "ms" in v else f"{m} {next(iter(v))}" for m, v in modes.items()]
    print(f"{name:>16}: " + ", ".join(cells), file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
