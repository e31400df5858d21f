"""Turn a benchmark result into latest.json, a Markdown table against the issue's targets, and a chart."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

MODES = {"a": "hand-written TF", "b": "engine in process", "c": "service over HTTP", "d": "naive Flask app"}
RATIOS = (("b", "a"), ("c", "a"), ("d", "a"), ("c", "d"))
COLORS = {"a": "#4c72b0", "b": "#55a868", "c": "#c44e52", "d": "#8172b2"}

FEW_SAMPLES = 10  # below this many samples a cell says how many: its p99 is nearly its maximum

Result = dict[str, Any]


def p50(result: Result, workload: str, mode: str) -> float | None:
    """The median in ms of one workload in one mode; (d) of a workload with a peer is the peer's."""
    entry = result.get("workloads", {}).get(workload)
    if entry is None:
        return None
    if mode == "d" and entry.get("peer"):
        entry = result["workloads"].get(entry["peer"], {})
    value = entry.get("modes", {}).get(mode, {}).get("ms", {}).get("p50")
    return float(value) if value is not None else None


def ratios(result: Result, workload: str) -> dict[str, float | None]:
    """Ratios of medians: (b)/(a), (c)/(a), (d)/(a) and (c)/(d)."""
    out: dict[str, float | None] = {}
    for num, den in RATIOS:
        top, bottom = p50(result, workload, num), p50(result, workload, den)
        out[f"{num}/{den}"] = top / bottom if top is not None and bottom else None
    return out


Measured = tuple[str, bool | None]  # what was measured, and whether it meets the target (None: not measured)


@dataclass(frozen=True)
class Target:
    what: str
    target: str
    measure: Callable[[Result], Measured]


def _ratio_target(workloads: list[str], limit: float) -> Callable[[Result], Measured]:
    def measure(result: Result) -> Measured:
        found = [(w, ratios(result, w)["b/a"]) for w in workloads]
        values = [v for _, v in found if v is not None]
        if not values:
            return "not measured", None
        text = " · ".join(f"{w} {fmt_ratio(v)}" if len(found) > 1 else fmt_ratio(v) for w, v in found)
        return text, len(values) == len(found) and all(v <= limit for v in values)

    return measure


def _http_single(result: Result) -> Measured:
    interleaved = result.get("workloads", {}).get("example3_repeat", {}).get("modes", {}).get("c", {}).get("ms")
    loop = result.get("one_client", {}).get("c")
    if not loop:
        if not interleaved:
            return "not measured", None
        loop = interleaved  # a run from before the back-to-back measurement
    text = f"p50 {fmt_ms(loop['p50'])}, p99 {fmt_ms(loop['p99'])}"
    if interleaved and loop is not interleaved:
        text += f" back to back (interleaved with the other modes: p50 {fmt_ms(interleaved['p50'])})"
    return text, loop["p50"] <= 3 and loop["p99"] <= 10


def _http_load(result: Result) -> Measured:
    load = result.get("concurrency", {}).get("c")
    if not load:
        return "not measured", None
    ms = load["latency_ms"]
    text = f"{load['rps']:.0f} req/s, p99 {fmt_ms(ms.get('p99', math.nan))}, {load['errors']} errors"
    return text, load["rps"] >= 200 and ms.get("p99", math.inf) <= 100 and load["errors"] == 0


def _round_trip(workload: str, limit_s: float) -> Callable[[Result], Measured]:
    def measure(result: Result) -> Measured:
        value = p50(result, workload, "c")
        return ("not measured", None) if value is None else (fmt_ms(value), value <= limit_s * 1000)

    return measure


def _batch(result: Result) -> Measured:
    mode = result.get("batch", {}).get("modes", {}).get("c")
    if not mode:
        return "not measured", None
    if "graphs_per_s" not in mode:
        return next(iter(mode.values())), False
    return f"{mode['graphs_per_s']:,.0f} graphs/s", mode["graphs_per_s"] >= 2000


def _memory(key: str, pick: Callable[[Any], float], limit: float, unit: str) -> Callable[[Result], Measured]:
    def measure(result: Result) -> Measured:
        value = result.get("memory", {}).get(key)
        if value is None:
            return "not measured", None
        got = pick(value)
        return f"{got:,.1f} {unit}", got <= limit

    return measure


TARGETS = [
    Target(
        "engine, contract examples, first sight",
        "≤ 1.5 × (a)",
        _ratio_target(["example1", "example2", "example3"], 1.5),
    ),
    Target("engine, MLP", "≤ 1.2 × (a)", _ratio_target(["mlp"], 1.2)),
    Target(
        "engine, MLP with b64 tensors (a comparison, not in issue 5)",
        "≤ 1.2 × (a)",
        _ratio_target(["mlp_b64"], 1.2),
    ),
    Target("engine, 200-op chain seen before (new values)", "≤ 0.25 × (a)", _ratio_target(["chain_seen"], 0.25)),
    Target("HTTP, example 3, one client", "p50 ≤ 3 ms, p99 ≤ 10 ms", _http_single),
    Target("HTTP, 16 clients, example 3", "≥ 200 req/s, p99 ≤ 100 ms, no errors", _http_load),
    Target("1000 × 1000 source round trip, JSON", "≤ 0.6 s", _round_trip("large_json", 0.6)),
    Target("1000 × 1000 source round trip, b64", "≤ 0.15 s", _round_trip("large_b64", 0.15)),
    Target("batch of 1,000 small graphs", "≥ 2,000 graphs/s", _batch),
    Target(
        "API process RSS (largest gunicorn worker, after load)",
        "≤ 150 MB",
        _memory("api_after_mb", lambda v: v["max_worker"], 150, "MB"),
    ),
    Target(
        "worker idle RSS (worker + its TF process)",
        "≤ 1.2 GB",
        _memory("worker_idle_mb", lambda v: max(w["total"] for w in v), 1200, "MB"),
    ),
    Target("worker ready after start (/readyz ok)", "≤ 6 s", _memory("worker_ready_s", float, 6, "s")),
]


def _load(averages: list[float] | None) -> str:
    return "?" if not averages else f"{averages[0]:.1f}"


def fmt_ms(ms: float) -> str:
    if ms >= 1000:
        return f"{ms / 1000:.2f} s"
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms"


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}×" if value < 10 else f"{value:.0f}×"


def _cell(mode: dict[str, Any] | None) -> str:
    if not mode:
        return "—"
    if "ms" not in mode:
        return "n/a" if "skipped" in mode else next(iter(mode.values()))[:60]
    text = f"{fmt_ms(mode['ms']['p50'])} / {fmt_ms(mode['ms']['p99'])}"
    if mode["ms"].get("n", FEW_SAMPLES) < FEW_SAMPLES:
        text += f" (n={mode['ms']['n']})"
    return text if mode.get("check", "ok") in ("ok", None) else f"{text} **wrong: {mode['check'][:80]}**"


def render_markdown(result: Result) -> str:
    """The whole report: targets with pass/fail, then latency, load, batch and memory tables."""
    machine, git, settings = result.get("machine", {}), result.get("git", {}), result.get("settings", {})
    dirty = " (dirty tree)" if git.get("dirty") else ""
    lines = [
        "# tapeserve benchmark",
        "",
        f"{result.get('started_at', '?')} · commit `{git.get('commit', '?')[:12]}`{dirty}"
        f" · {machine.get('cpu', '?')}, {machine.get('cpus', '?')} CPUs · plan `{settings.get('plan', '?')}`,"
        f" {settings.get('workers', 1)} worker(s) · {result.get('elapsed_s', 0):.0f} s · load average"
        f" {_load(machine.get('load_average'))} before, {_load(machine.get('load_average_end'))} after",
        "",
        "Modes: (a) hand-written TF eager in process, the floor; (b) the engine in process (document in,"
        " document out); (c) the service over HTTP (gunicorn, Redis, worker); (d) a naive Flask app running"
        " (a) inside the request. Ratios are of medians (p50); absolute times (p50 / p99) beside them.",
        "",
        "## Targets (issue 5)",
        "",
        "| what | target | measured | pass |",
        "|---|---|---|---|",
    ]
    for t in TARGETS:
        text, ok = t.measure(result)
        lines.append(f"| {t.what} | {t.target} | {text} | {'—' if ok is None else 'pass' if ok else 'FAIL'} |")
    lines += [
        "",
        "## Latency by workload",
        "",
        "| workload | (b)/(a) | (c)/(a) | (d)/(a) | (c)/(d) | " + " | ".join(f"({m}) p50 / p99" for m in MODES) + " |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in result.get("workloads", {}).items():
        r = ratios(result, name)
        cells = [fmt_ratio(r[f"{n}/{d}"]) for n, d in RATIOS]
        modes = entry.get("modes", {})
        lines.append(
            f"| {entry.get('title', name)} | " + " | ".join(cells + [_cell(modes.get(m)) for m in MODES]) + " |"
        )
    lines += _one_client_lines(result) + _load_lines(result) + _batch_lines(result) + _memory_lines(result)
    return "\n".join(lines) + "\n"


def _one_client_lines(result: Result) -> list[str]:
    loop = result.get("one_client")
    if not loop:
        return []
    lines = ["", "## One client, example 3, back to back (blocks of (c) and (d) in turns)", ""]
    lines += ["| mode | p50 | p99 | n |", "|---|---|---|---|"]
    for mode, ms in loop.items():
        lines.append(f"| ({mode}) {MODES[mode]} | {fmt_ms(ms['p50'])} | {fmt_ms(ms['p99'])} | {ms['n']} |")
    ratio = loop["c"]["p50"] / loop["d"]["p50"] if loop.get("d", {}).get("p50") else math.nan
    lines += ["", f"(c)/(d): {fmt_ratio(ratio)}"]
    cpu = result.get("one_client_cpu_ms")
    if cpu:
        lines += ["", "CPU time per request, by process (user + system), against the wall time's mean:", ""]
        cpus = result.get("machine", {}).get("cpus", "?")
        for mode, roles in cpu.items():
            parts = " + ".join(f"{role} {ms:.2f}" for role, ms in roles.items())
            mean = loop.get(mode, {}).get("mean", math.nan)
            lines.append(
                f"- ({mode}) {parts} = {sum(roles.values()):.2f} ms for {mean:.2f} ms of wall time on {cpus} CPUs"
            )
    return lines


def _load_lines(result: Result) -> list[str]:
    load = result.get("concurrency")
    if not load:
        return []
    first = next(iter(load.values()))
    lines = ["", f"## {first['clients']} clients, example 3, {first['seconds']:.0f} s each", ""]
    lines += ["| mode | req/s | p50 | p99 | errors |", "|---|---|---|---|---|"]
    for mode, r in load.items():
        ms = r["latency_ms"]
        p50_text, p99_text = (fmt_ms(ms["p50"]), fmt_ms(ms["p99"])) if ms.get("n") else ("—", "—")
        lines.append(f"| ({mode}) {MODES[mode]} | {r['rps']:.0f} | {p50_text} | {p99_text} | {r['errors']} |")
    return lines


def _batch_lines(result: Result) -> list[str]:
    batch = result.get("batch")
    if not batch:
        return []
    modes = batch["modes"]
    lines = [
        "",
        f"## Batch of {batch['graphs']:,} small graphs ((a), (b): a loop; (c): `POST /v1/batches`; (d): one POST each)",
        "",
        "| mode | graphs/s | vs (a) | vs (d) | per batch p50 |",
        "|---|---|---|---|---|",
    ]
    rate = {m: v.get("graphs_per_s") for m, v in modes.items()}
    for mode, v in modes.items():
        if "graphs_per_s" not in v:
            lines.append(f"| ({mode}) {MODES[mode]} | {next(iter(v.values()))} | — | — | — |")
            continue
        vs_a = fmt_ratio(rate["a"] / v["graphs_per_s"]) if rate.get("a") else "—"
        vs_d = fmt_ratio(rate["d"] / v["graphs_per_s"]) if rate.get("d") else "—"
        wrong = "" if v.get("check") in ("ok", None) else f" **wrong: {v['check'][:80]}**"
        lines.append(
            f"| ({mode}) {MODES[mode]} | {v['graphs_per_s']:,.0f}{wrong} | {vs_a} | {vs_d} | {fmt_ms(v['ms']['p50'])} |"
        )
    lines.append("")
    lines.append("vs (a) and vs (d) are time ratios (this mode's time per graph over theirs).")
    return lines


def _memory_lines(result: Result) -> list[str]:
    mem = result.get("memory", {})
    lines = ["", "## Memory and start-up", ""]
    if "api_idle_mb" in mem:
        for key, when in (("api_idle_mb", "idle"), ("api_after_mb", "after the run")):
            if key in mem:
                workers = ", ".join(f"{w:.0f}" for w in mem[key]["workers"])
                lines.append(f"- API RSS {when}: master {mem[key]['master']:.0f} MB, workers {workers} MB")
    for key, when in (("worker_idle_mb", "idle after start"), ("worker_after_mb", "after the run")):
        if key in mem:
            totals = ", ".join(f"{w['total']:.0f}" for w in mem[key])
            lines.append(f"- worker RSS {when} (worker + TF process): {totals} MB")
    if "worker_ready_s" in mem:
        lines.append(f"- worker ready after start: {mem['worker_ready_s']:.2f} s (until /readyz answered 200)")
    if "worker_registered_s" in mem:
        lines.append(
            f"- worker registered in Redis after start: {mem['worker_registered_s']:.2f} s"
            " (/readyz reuses its worker count for WORKER_CHECK_S, so it can lag this)"
        )
    floor = result.get("http_floor_ms")
    if floor:
        lines.append(
            f"- HTTP floor, `GET /healthz` p50: (c) {fmt_ms(floor['c']['p50'])}, (d) {fmt_ms(floor['d']['p50'])}"
        )
    if floor and "c_enqueue" in floor:
        lines.append(
            f"- API's own share, example 3 with `Prefer: respond-async` (validate, enqueue, 202) p50:"
            f" {fmt_ms(floor['c_enqueue']['p50'])}, p99 {fmt_ms(floor['c_enqueue']['p99'])}"
        )
    if result.get("engine_cache"):
        lines.append(f"- engine cache in process (b): {result['engine_cache']}")
    return lines


def render_chart(result: Result, path: Path) -> None:
    """Latency distributions per workload (log scale) and the ratio bars, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = result.get("workloads", {})
    panels = [(e.get("title", n), e.get("modes", {})) for n, e in workloads.items()]
    if result.get("concurrency"):
        panels.append(
            (
                "example 3, concurrent clients",
                {m: {"samples_ms": v["samples_ms"]} for m, v in result["concurrency"].items()},
            )
        )
    batch = {m: v["graphs_per_s"] for m, v in result.get("batch", {}).get("modes", {}).items() if "graphs_per_s" in v}
    cols = 3
    rows = math.ceil((len(panels) + bool(batch)) / cols) + 1
    fig = plt.figure(figsize=(15, 3.2 * rows), layout="constrained")
    grid = fig.add_gridspec(rows, cols)
    for k, (title, modes) in enumerate(panels):
        ax = fig.add_subplot(grid[k // cols, k % cols])
        present = [m for m in MODES if modes.get(m, {}).get("samples_ms")]
        if present:
            box = ax.boxplot(
                [modes[m]["samples_ms"] for m in present],
                tick_labels=[f"({m})" for m in present],
                patch_artist=True,
                showfliers=True,
                flierprops={"markersize": 2},
            )
            for patch, m in zip(box["boxes"], present, strict=True):
                patch.set_facecolor(COLORS[m])
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("ms")
    if batch:
        k = len(panels)
        ax = fig.add_subplot(grid[k // cols, k % cols])
        ax.bar([f"({m})" for m in batch], list(batch.values()), color=[COLORS[m] for m in batch])
        ax.axhline(2000, color="black", linestyle="--", linewidth=0.8, label="target for (c)")
        ax.set_title(f"batch of {result['batch']['graphs']:,} small graphs", fontsize=10)
        ax.set_ylabel("graphs/s")
        ax.legend(fontsize=8)
    ax = fig.add_subplot(grid[rows - 1, :])
    names = list(workloads)
    width = 0.8 / len(RATIOS)
    for j, (num, den) in enumerate(RATIOS):
        values = [ratios(result, n)[f"{num}/{den}"] or 0.0 for n in names]
        ax.bar(
            [i + j * width for i in range(len(names))],
            values,
            width,
            label=f"({num})/({den})",
            color=COLORS[num],
            alpha=1.0 if den == "a" else 0.5,
            hatch="" if den == "a" else "//",
        )
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(
        [i + 0.4 - width / 2 for i in range(len(names))],
        [workloads[n].get("title", n) for n in names],
        rotation=15,
        fontsize=8,
    )
    ax.set_ylabel("ratio of medians")
    ax.set_title("ratios against (a) hand-written TF and (d) the naive app (below 1: faster)")
    ax.legend(fontsize=8)
    fig.suptitle(f"tapeserve benchmark, {result.get('started_at', '')}, plan {result.get('settings', {}).get('plan')}")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(result: Result, outdir: Path) -> str:
    """Write latest.json, latest.md and latest.png into `outdir`; return the Markdown."""
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "latest.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    markdown = render_markdown(result)
    (outdir / "latest.md").write_text(markdown)
    render_chart(result, outdir / "latest.png")
    return markdown
