"""The benchmark's output: a Markdown section in ``bench/RESULTS.md`` and a latency chart.

``render`` turns one run into a section: machine, command, correctness, one table per figure
(Tributary, each peer, and the ratio Tributary / peer) and the issue-8 targets marked met or
missed. ``update_results`` puts the section into the file, replacing the earlier section of the
same workload (so a rerun updates its figures and quick runs never clobber full ones); the newest
section goes first. ``chart`` draws p50 latency per query and range, log scale.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.loader import IngestResult
from bench.peers import PeerResult
from bench.queries import KINDS, RANGES, Cell, Mismatch

__all__ = ["RunReport", "TributaryReport", "chart", "machine", "render", "update_results"]

MIB = 1 << 20
W20_EVENTS = 20_000_000
LABELS = {"tributary": "Tributary", "duckdb": "DuckDB", "duckdb_sorted": "DuckDB sorted", "chdb": "chdb"}
_HEADER = """# Benchmark results

Produced by `just bench` (`uv run python -m bench.run`); each section is one run, newest first.
Workload W20 and the method are described in `bench/workload.py`, `bench/queries.py`,
`bench/peers.py` and `bench/loader.py`. Ratios are Tributary / peer: below 1 is better for
Tributary on latency, memory and disk; above 1 is better on ingest. Targets from issue 8.
"""


@dataclass
class TributaryReport:
    ingest: dict[str, IngestResult]
    cells: dict[tuple[str, str], Cell]
    rss_peaks: dict[str, int]
    disk_running: int
    disk_stopped: int
    events: int
    mismatches: list[Mismatch]
    queries: int
    stats: dict[str, object] | None = None
    stop_code: int | None = None


@dataclass
class RunReport:
    name: str
    events: int
    seed: int
    command: str
    queries_per_cell: int
    peers: dict[str, PeerResult]
    peer_cells: dict[str, dict[tuple[str, str], Cell]]
    tributary: TributaryReport | None
    chart_path: Path | None
    notes: list[str] = field(default_factory=list)
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


def machine() -> str:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = psutil.virtual_memory().total / (1 << 30)
    return f"{os.cpu_count()} cores ({model}), {memory:.1f} GiB RAM, {platform.system()} {platform.release()}"


def _ms(v: float | None) -> str:
    return "–" if v is None else (f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}")


def _ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or not theirs:
        return "–"
    return f"{ours / theirs:.2f}×"


def _latency_table(r: RunReport, which: str) -> list[str]:
    systems = list(r.peers)
    head = ["query", "range", "Tributary"]
    for s in systems:
        head += [LABELS[s], f"T/{LABELS[s]}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind in KINDS:
        for rng in RANGES:
            t = r.tributary.cells.get((kind, rng)) if r.tributary else None
            ours = getattr(t, which) if t else None
            row = [kind if kind != "topk" else "top-10", rng, _ms(ours)]
            for s in systems:
                cell = r.peer_cells[s].get((kind, rng))
                theirs = getattr(cell, which) if cell else None
                row += [_ms(theirs), _ratio(ours, theirs)]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**MISSED**")


def _targets(r: RunReport) -> list[str]:
    t = r.tributary
    rows: list[tuple[str, str, str, bool | None]] = []
    for kind in ("count", "sum"):
        for rng in RANGES:
            c = t.cells.get((kind, rng)) if t else None
            ok = None if c is None else (c.p50_ms <= 3 and c.p95_ms <= 6)
            shown = "–" if c is None else f"{_ms(c.p50_ms)} / {_ms(c.p95_ms)} ms"
            rows.append((f"{kind} p50 / p95, {rng}", "<= 3 / <= 6 ms", shown, ok))
    for rng, limit in (("1h", 8.0), ("24h", 20.0)):
        c = t.cells.get(("topk", rng)) if t else None
        shown = "–" if c is None else f"{_ms(c.p50_ms)} ms"
        rows.append((f"top-10 p50, {rng}", f"<= {limit:.0f} ms", shown, None if c is None else c.p50_ms <= limit))
    for fmt, floor in (("arrow", 4e6), ("json", 0.8e6), ("ndjson", 0.8e6)):
        ing = t.ingest.get(fmt) if t else None
        shown = "–" if ing is None else f"{ing.events_per_s / 1e6:.2f}M events/s"
        rows.append(
            (
                f"durable ingest, {fmt}",
                f">= {floor / 1e6:g}M events/s",
                shown,
                None if ing is None else ing.events_per_s >= floor,
            )
        )
    peak = max(t.rss_peaks.values()) if t and t.rss_peaks else None
    rows.append(
        (
            "peak RSS, loading and queries",
            "<= 300 MiB",
            "–" if peak is None else f"{peak / MIB:.0f} MiB",
            None if peak is None else peak <= 300 * MIB,
        )
    )
    bpe = t.disk_stopped / t.events if t and t.events else None
    rows.append(
        (
            "bytes on disk per event",
            "<= 12",
            "–" if bpe is None else f"{bpe:.1f}",
            None if bpe is None else bpe <= 12,
        )
    )
    rows.append(("RSS at 200M events", "within 20% of 20M", "not measured by this run", None))
    rows.append(("3-node RF=2 cluster", "query p50 <= 2× single, ingest >= 40%", "not measured by this run", None))
    lines = ["| figure | target | measured | |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {_mark(ok)} |" for a, b, c, ok in rows]
    return lines


def _ingest_table(r: RunReport) -> list[str]:
    t = r.tributary
    lines = [
        "| format | Tributary events/s | events | batches | clients | 429/503 retries | body bytes/event |",
        "|---|---|---|---|---|---|---|",
    ]
    for fmt, ing in t.ingest.items() if t else []:
        lines.append(
            f"| {fmt} | {ing.events_per_s / 1e6:.2f}M | {ing.events:,} | {ing.batches} | {ing.clients} "
            f"| {ing.retries} | {ing.body_bytes / max(ing.events, 1):.1f} |"
        )
    arrow = t.ingest.get("arrow") if t else None
    lines += [
        "",
        "Peers' bulk load of the same events from the Parquet chunks (in-process, one statement, "
        "not over HTTP, not durable batch by batch — a ceiling, not a like-for-like figure):",
        "",
        "| peer | load events/s | load s | T arrow / peer |",
        "|---|---|---|---|",
    ]
    for name, p in r.peers.items():
        rate = p.events / p.load_s if p.load_s else 0.0
        lines.append(
            f"| {LABELS[name]} | {rate / 1e6:.2f}M | {p.load_s:.1f} | "
            f"{_ratio(arrow.events_per_s if arrow else None, rate)} |"
        )
    return lines


def _resources_table(r: RunReport) -> list[str]:
    t = r.tributary
    peak_t = max(t.rss_peaks.values()) if t and t.rss_peaks else None
    bpe_t = t.disk_stopped / t.events if t and t.events else None
    lines = ["| system | peak RSS | T/peer | bytes on disk / event | T/peer |", "|---|---|---|---|---|"]
    if t:
        ing, qry = t.rss_peaks.get("ingest"), t.rss_peaks.get("queries")
        lines.append(
            f"| Tributary (server process tree) | {_mib(ing)} loading, {_mib(qry)} serving queries | "
            f"| {t.disk_stopped / t.events:.2f} stopped ({t.disk_running / t.events:.2f} running) | |"
        )
    for name, p in r.peers.items():
        bpe = p.disk_bytes / p.events
        lines.append(
            f"| {LABELS[name]} (whole process: load, then queries) | {_mib(p.peak_rss_bytes)} | "
            f"{_ratio(peak_t, p.peak_rss_bytes)} | {bpe:.2f} | {_ratio(bpe_t, bpe)} |"
        )
    return lines


def _mib(v: int | None) -> str:
    return "–" if v is None else f"{v / MIB:.0f} MiB"


def render(r: RunReport) -> str:
    out = [
        f"<!-- bench:{r.name} -->",
        f"## {r.name}: {r.events:,} events, seed {r.seed}",
        "",
        f"- date: {r.started:%Y-%m-%d %H:%M} UTC",
        f"- command: `{r.command}`",
        f"- machine: {machine()}",
        f"- queries: {r.queries_per_cell} per (kind, range), random category, random nanosecond start, "
        "wall time per query (Tributary: HTTP round trip from one keep-alive client; peers: in-process)",
    ]
    t = r.tributary
    agree = f"all {len(next(iter(r.peers.values())).answers) if r.peers else 0} queries agree across the peers"
    if t is None:
        out.append(f"- correctness: {agree}; Tributary skipped")
    elif not t.mismatches:
        out.append(f"- correctness: {agree}, and Tributary's answers equal theirs on every query")
    else:
        out.append(
            f"- correctness: {agree}; **Tributary answered {len(t.mismatches)} of {t.queries} queries "
            "differently — its latency figures below are not valid until fixed**:"
        )
        for m in t.mismatches[:5]:
            q = m.query
            out.append(
                f"  - {q.kind} {q.category} [{q.start}, {q.end}): expected `{m.expected!r:.200}`, got `{m.got!r:.200}`"
            )
    if t:
        out.append(f"- server exit code after SIGTERM: {t.stop_code}")
    if t and t.stats:
        out.append(f"- server `/v1/stats` after loading: `{t.stats}`")
    if r.chart_path:
        out.append(f"- chart: `{r.chart_path}`")
    out += [f"- {n}" for n in r.notes]
    if r.events != W20_EVENTS:
        out.append(f"- the targets are set for W20 at {W20_EVENTS:,} events; at this size they are indicative only")
    out += ["", "### Targets (issue 8)", "", *_targets(r)]
    out += ["", "### Query latency p50 (ms)", "", *_latency_table(r, "p50_ms")]
    out += ["", "### Query latency p95 (ms)", "", *_latency_table(r, "p95_ms")]
    out += ["", "### Ingest", "", *_ingest_table(r)]
    out += ["", "### Memory and disk", "", *_resources_table(r), ""]
    return "\n".join(out) + "\n"


def update_results(path: Path, name: str, section: str) -> None:
    """Puts ``section`` first in ``path``, replacing any earlier section for workload ``name``."""
    text = path.read_text() if path.exists() else _HEADER
    head, _, rest = text.partition("<!-- bench:")
    rest = "<!-- bench:" + rest if rest else ""
    sections = [s for s in re.split(r"(?=^<!-- bench:)", rest, flags=re.M) if s.strip()]
    kept = [s for s in sections if not s.startswith(f"<!-- bench:{name} -->")]
    path.write_text(head.rstrip() + "\n\n" + "\n".join(s.rstrip() + "\n" for s in [section, *kept]))


def chart(path: Path, r: RunReport) -> None:
    """Grouped bars of p50 latency per (query, range) for Tributary and every peer, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems: dict[str, dict[tuple[str, str], Cell]] = {}
    if r.tributary:
        systems["tributary"] = r.tributary.cells
    systems.update(r.peer_cells)
    keys = [(k, g) for k in KINDS for g in RANGES]
    width = 0.8 / max(len(systems), 1)
    fig, ax = plt.subplots(figsize=(11, 5))
    for i, (name, cells) in enumerate(systems.items()):
        xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(keys))]
        ys = [cells[k].p50_ms if k in cells else 0.0 for k in keys]
        ax.bar(xs, ys, width, label=LABELS[name])
    ax.set_yscale("log")
    ax.set_xticks(range(len(keys)), [f"{'top-10' if k == 'topk' else k}\n{g}" for k, g in keys])
    ax.set_ylabel("p50 latency, ms (log scale)")
    ax.set_title(f"{r.name}: p50 latency per query and range (Tributary over HTTP, peers in-process)")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
