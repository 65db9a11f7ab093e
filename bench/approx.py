"""Exact vs approximate distinct, top-k and quantiles: latency, memory and observed error (issue 7).

    uv run python -m bench.approx                          # 4M events over 8 days, a few minutes
    uv run python -m bench.approx --events 1000000 --runs 4

The workload is W20's (``bench.workload``: Zipf producers, 20 uniform categories, values
1..1000) stretched from one day to ``--days`` days, so 7-day ranges exist. It is loaded
in-process into a ``cluster.Node`` (WAL fsync off: ingest is not what is measured here),
persisted every ``--persist-rows`` events so each hour gets several parts, each with its sketch
file, then compacted, so the answers use merged sketches as a long-running node would.

- latency: wall time of ``Node.distinct`` / ``Node.topk`` / ``Node.quantiles`` in this process
  (no HTTP), exact and with ``approx``, on ``--runs`` random unaligned ranges per cell (random
  category and nanosecond start), after one warm-up query; p50 and max.
- memory: peak RSS growth of a fresh process that opens the node and answers one query of the
  cell (RSS sampled every 2 ms during the query, minus RSS just before it).
- error: each approximate answer against the exact one on the same range.

The section goes into ``bench/RESULTS.md`` under ``<!-- bench:approx-... -->``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa

from bench.report import machine, update_results
from bench.server import bytes_by_kind
from bench.workload import DAY_NS, Workload
from cluster.node import Node, NodeConfig
from ingest.persister import PersistConfig
from ingest.wal import WalConfig
from storage.compaction import CompactionConfig
from storage.schema import EVENT_SCHEMA, HOUR_NS

__all__ = ["main"]

BENCH_DIR = Path(__file__).resolve().parent
RANGES = {"1h": HOUR_NS, "24h": 24 * HOUR_NS, "7d": 7 * 24 * HOUR_NS}
KINDS = ("distinct", "topk", "quantiles")
K = 10
QS = [0.5, 0.9, 0.99]


def _log(message: str) -> None:
    print(f"[bench.approx {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _config(data: Path) -> NodeConfig:
    # Persisting and compacting happen when this bench says, never in the background.
    return NodeConfig(
        data_dir=data,
        wal=WalConfig(fsync=False),
        persist=PersistConfig(max_bytes=1 << 40, max_age_s=1e9),
        compaction=CompactionConfig(min_parts=1 << 30, cold_after_s=0),
        compact_every_s=1e9,
    )


def _stretched(workload: Workload, days: int) -> Iterator[pa.Table]:
    """W20's events with each timestamp's offset in its day scaled by ``days``: the same
    producers and values over ``days`` days ending where W20's day ends."""
    start = workload.day_start_ns - (days - 1) * DAY_NS
    field = EVENT_SCHEMA.field("timestamp")
    for chunk in workload.chunks():
        offsets = chunk["timestamp"].to_numpy() - workload.day_start_ns
        yield chunk.set_column(0, field, pa.array(start + offsets * days, pa.int64()))


def load(data: Path, workload: Workload, days: int, persist_rows: int) -> dict[str, Any]:
    """Ingest, persist every ``persist_rows`` events, compact; returns what it cost and the span."""
    node = Node(_config(data))
    t0 = time.perf_counter()
    persist_s = 0.0
    pending = 0
    for chunk in _stretched(workload, days):
        for lo in range(0, chunk.num_rows, 100_000):
            node.ingest(chunk.slice(lo, 100_000))
            pending += min(100_000, chunk.num_rows - lo)
            if pending >= persist_rows:
                t1 = time.perf_counter()
                node.persist_now()
                persist_s += time.perf_counter() - t1
                pending = 0
    t1 = time.perf_counter()
    node.persist_now()
    persist_s += time.perf_counter() - t1
    parts_before = len(node.manifest.state.parts)
    t1 = time.perf_counter()
    node.compact_now(force=True)
    compact_s = time.perf_counter() - t1
    parts_after = len(node.manifest.state.parts)
    node.close(persist=False)
    sizes = bytes_by_kind(data)
    first = workload.day_start_ns - (days - 1) * DAY_NS
    return {
        "load_s": time.perf_counter() - t0,
        "persist_s": persist_s,
        "compact_s": compact_s,
        "parts_before": parts_before,
        "parts_after": parts_after,
        "bytes": sizes,
        "span": (first, first + days * DAY_NS),
    }


def _ask(node: Node, kind: str, approx: bool, category: str, start: int, end: int) -> Any:
    if kind == "distinct":
        return node.distinct(category, start, end, approx).value
    if kind == "topk":
        return node.topk(category, start, end, K, approx=approx).value
    return node.quantiles(category, start, end, QS, approx).value


def _ranges(span: tuple[int, int], length: int, categories: list[str], n: int, seed: int) -> list[tuple[str, int, int]]:
    rng = np.random.default_rng(seed)
    lo, hi = span
    out = []
    for _ in range(n):
        start = lo + int(rng.integers(0, hi - lo - length))
        out.append((str(rng.choice(categories)), start, start + length))
    return out


def _rank_error(node: Node, category: str, start: int, end: int, answer: Any) -> float:
    """The largest distance of an approximate quantile's true rank interval from its q."""
    hist = node.approx.histogram(category, start, end)
    values = hist["value"].to_numpy()
    cum = np.cumsum(hist["n"].to_numpy())
    n = int(cum[-1]) if len(cum) else 0
    worst = 0.0
    for item in answer["quantiles"] if n else []:
        i = int(np.searchsorted(values, item["value"]))
        below = int(cum[i - 1]) if i else 0
        upto = int(cum[i])
        q = item["q"]
        worst = max(worst, max(below / n - q, q - upto / n, 0.0))
    return worst


def _error(node: Node, kind: str, category: str, start: int, end: int, exact: Any, approx: Any) -> dict[str, float]:
    if kind == "distinct":
        inside = approx["lower_bound"] <= exact <= approx["upper_bound"]
        return {"rel": abs(approx["value"] - exact) / exact if exact else 0.0, "inside": float(inside)}
    if kind == "topk":
        truth = {t.producer_id: t.count for t in node.topk(category, start, end, 1000).value}  # type: ignore[attr-defined]
        top_exact = {t.producer_id for t in exact}
        listed = approx["producers"]
        recall = len(top_exact & {p["producer_id"] for p in listed}) / max(len(top_exact), 1)
        rel = [
            abs(p["estimate"] - truth[p["producer_id"]]) / truth[p["producer_id"]]
            for p in listed
            if p["producer_id"] in truth
        ]
        inside = all(
            p["lower_bound"] <= truth[p["producer_id"]] <= p["upper_bound"] for p in listed if p["producer_id"] in truth
        )
        return {
            "recall": recall,
            "rel": max(rel, default=0.0),
            "guaranteed": float(approx["guaranteed"]),
            "inside": float(inside),
        }
    return {"rank": _rank_error(node, category, start, end, approx), "stated": approx["rank_error"]}


def measure(data: Path, workload: Workload, span: tuple[int, int], runs: int, seed: int) -> dict[tuple[str, str], Any]:
    """Latency and error per (kind, range) cell, exact and approximate, in this process."""
    node = Node(_config(data))
    cells: dict[tuple[str, str], Any] = {}
    try:
        for name, length in RANGES.items():
            ranges = _ranges(span, length, workload.category_names, runs + 1, seed)
            for kind in KINDS:
                times: dict[bool, list[float]] = {False: [], True: []}
                errors: list[dict[str, float]] = []
                for i, (c, s, e) in enumerate(ranges):
                    answers = {}
                    for approx in (False, True):
                        t0 = time.perf_counter()
                        answers[approx] = _ask(node, kind, approx, c, s, e)
                        if i:  # the first range warms caches up
                            times[approx].append((time.perf_counter() - t0) * 1000)
                    if i:
                        errors.append(_error(node, kind, c, s, e, answers[False], answers[True]))
                cells[(kind, name)] = {"ms": times, "errors": errors, "probe": ranges[1]}
                if kind != "topk":  # what one node would send a coordinator for this answer
                    c, s, e = ranges[1]
                    partial = node.answers.distinct_partial if kind == "distinct" else node.answers.quantiles_partial
                    wire = {
                        a: len(json.dumps(partial(c, s, e, a, list(range(node.config.shards))))) for a in (False, True)
                    }
                    cells[(kind, name)]["wire"] = wire
                p50 = {a: statistics.median(t) for a, t in times.items()}
                _log(f"{kind} {name}: exact p50 {p50[False]:.1f} ms, approx p50 {p50[True]:.1f} ms")
    finally:
        node.close(persist=False)
    return cells


def _peak_rss(run: Callable[[], object]) -> tuple[int, float]:
    """(peak RSS growth in bytes while ``run`` ran, its wall time in ms)."""
    proc = psutil.Process()
    before = proc.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            done.wait(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    run()
    ms = (time.perf_counter() - t0) * 1000
    done.set()
    sampler.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return peak[0] - before, ms


def _child(args: argparse.Namespace) -> None:
    """One query in a fresh process: prints its peak RSS growth as JSON."""
    node = Node(_config(Path(args.data)))
    try:
        # One query first on another range of the same length: libraries' lazy set-up is not the query's.
        length = args.end - args.start
        warm = args.start - length if args.start - length >= args.span_start else args.end
        _ask(node, args.kind, args.approx, args.category, warm, warm + length)
        grow, ms = _peak_rss(lambda: _ask(node, args.kind, args.approx, args.category, args.start, args.end))
    finally:
        node.close(persist=False)
    print(json.dumps({"rss_growth": grow, "ms": ms}))


def memory(data: Path, cells: dict[tuple[str, str], Any], span: tuple[int, int]) -> dict[tuple[str, str, bool], int]:
    out = {}
    for (kind, name), cell in cells.items():
        c, s, e = cell["probe"]
        for approx in (False, True):
            cmd = [sys.executable, "-m", "bench.approx", "--child", "--data", str(data), "--kind", kind]
            cmd += ["--category", c, "--start", str(s), "--end", str(e), "--span-start", str(span[0])]
            cmd += ["--approx"] if approx else []
            done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=BENCH_DIR.parent)
            out[(kind, name, approx)] = int(json.loads(done.stdout.strip().splitlines()[-1])["rss_growth"])
    return out


def _mib(v: int) -> str:
    return f"{v / (1 << 20):.1f}"


def _describe_error(kind: str, errors: list[dict[str, float]]) -> str:
    if kind == "distinct":
        rel = [e["rel"] for e in errors]
        inside = sum(e["inside"] for e in errors)
        return (
            f"relative error median {statistics.median(rel):.2%}, max {max(rel):.2%}; "
            f"truth inside the bounds {inside:.0f}/{len(errors)}"
        )
    if kind == "topk":
        recall = statistics.mean(e["recall"] for e in errors)
        worst = max(e["rel"] for e in errors)
        guaranteed = sum(e["guaranteed"] for e in errors)
        inside = sum(e["inside"] for e in errors)
        return (
            f"top-{K} recall {recall:.0%}; count error max {worst:.2%}; guaranteed {guaranteed:.0f}/{len(errors)}; "
            f"bounds hold {inside:.0f}/{len(errors)}"
        )
    rank = max(e["rank"] for e in errors)
    stated = max(e["stated"] for e in errors)
    return f"rank error max {rank:.3%} (stated up to {stated:.3%}) over q = {', '.join(map(str, QS))}"


def render(
    args: argparse.Namespace,
    workload: Workload,
    loaded: dict[str, Any],
    cells: dict[tuple[str, str], Any],
    mem: dict[tuple[str, str, bool], int],
) -> str:
    name = _name(workload, args.days)
    sizes = loaded["bytes"]
    events_b, sketch_b = sizes.get("events", 0), sizes.get("sketch_v2", 0)
    rollups_b = sizes.get("rollup_minute", 0) + sizes.get("rollup_producer", 0)
    per_hour = workload.events // (args.days * 24 * workload.categories)
    wire: list[str] = []
    command = (
        f"uv run python -m bench.approx --events {args.events} --days {args.days} "
        f"--categories {args.categories} --runs {args.runs}"
    )
    lines = [
        f"<!-- bench:{name} -->",
        f"## {name}: exact vs approximate answers (issue 7)",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- command: `{command}`",
        f"- machine: {machine()}; load average (1 min) at start {loaded['load_avg']:.1f} "
        "(other engineers' work shares the cores)",
        f"- workload: W20's generator (seed {workload.seed}, {workload.producers:,} Zipf producers, values "
        f"1..{workload.value_max}) with {workload.categories} categories, stretched over {args.days} days: "
        f"{workload.events:,} events, about {per_hour:,} per category-hour (W20 itself: 41,667)",
        f"- load: {loaded['load_s']:.1f} s in-process, persists {loaded['persist_s']:.1f} s, compaction "
        f"{loaded['compact_s']:.1f} s ({loaded['parts_before']} parts merged to {loaded['parts_after']}); "
        "default sketch sizes (CPC lg_k 12, frequent_lg_max_k 10, kll_k 200); 256 shards",
        f"- on disk after compaction: events {_mib(events_b)} MiB, rollups {_mib(rollups_b)} MiB, "
        f"sketches {_mib(sketch_b)} MiB ({sketch_b / max(events_b, 1):.0%} of the events)",
        f"- latency: in-process `Node` calls (no HTTP), {args.runs} random unaligned ranges per cell with a "
        f"random category, after a warm-up query; top-{K}; quantiles q = {', '.join(map(str, QS))}",
        "- memory: peak RSS growth of a fresh process while it answers one query of the cell, after one "
        "warm-up query of the same kind on another range",
        "",
        "Approximate answers merge one sketch per (category, shard, hour) in range (up to 256 x 168 for 7 "
        "days) plus sketches of the ragged edges' raw rows, whatever the number of events; exact answers read "
        "producer rollups and raw rows, which grow with the events and the distinct producers per hour. At a "
        "quarter of W20's density per category-hour the two costs are of the same order, and approximate "
        "top-k (a frequent-items merge per shard) costs more than the exact one; the balance moves toward "
        "the sketches as density grows. The error stayed inside every stated bound. In a cluster a node's "
        "approximate partial is bounded (second table); the exact distinct partial is one integer, and the "
        "exact quantile partial is a histogram of distinct values, small here only because W20's values "
        "take 1,000 distinct values.",
        "",
        "| query | range | exact p50 / max ms | approx p50 / max ms | exact MiB | approx MiB | observed error |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        for rng in RANGES:
            cell = cells[(kind, rng)]
            ex, ap = cell["ms"][False], cell["ms"][True]
            if "wire" in cell:
                wire.append(f"| {kind} | {rng} | {cell['wire'][False]:,} | {cell['wire'][True]:,} |")
            lines.append(
                f"| {kind} | {rng} | {statistics.median(ex):.1f} / {max(ex):.1f} "
                f"| {statistics.median(ap):.1f} / {max(ap):.1f} "
                f"| {_mib(mem[(kind, rng, False)]) if mem else '-'} | {_mib(mem[(kind, rng, True)]) if mem else '-'} "
                f"| {_describe_error(kind, cell['errors'])} |"
            )
    lines += [
        "",
        "Bytes one node sends the coordinator for its share (`Node.*_partial` over all 256 shards, as JSON):",
        "",
        "| query | range | exact partial (bytes) | approx partial (bytes) |",
        "|---|---|---|---|",
        *wire,
    ]
    return "\n".join(lines) + "\n"


def _name(workload: Workload, days: int) -> str:
    return f"approx-{workload.name}-{workload.categories}c-{days}d"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.approx", description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=4_000_000, help="events in all (default 4M)")
    p.add_argument("--days", type=int, default=8, help="days the events span (>= 8 for 7-day ranges)")
    p.add_argument("--producers", type=int, default=1_000_000)
    p.add_argument(
        "--categories", type=int, default=2, help="fewer than W20's 20 so a category-hour holds W20-like volumes"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--runs", type=int, default=6, help="ranges per (query, range) cell")
    p.add_argument(
        "--persist-rows", type=int, default=0, help="persist every this many events (default: about 2 parts an hour)"
    )
    p.add_argument("--no-memory", action="store_true", help="skip the per-query memory processes")
    p.add_argument("--results", type=Path, default=BENCH_DIR / "RESULTS.md")
    p.add_argument("--keep", type=Path, default=None, help="keep the node's data directory here")
    # one query in a fresh process (used by the memory measurement)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--kind", help=argparse.SUPPRESS)
    p.add_argument("--approx", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--category", help=argparse.SUPPRESS)
    p.add_argument("--start", type=int, help=argparse.SUPPRESS)
    p.add_argument("--end", type=int, help=argparse.SUPPRESS)
    p.add_argument("--span-start", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.child:
        _child(args)
        return
    workload = Workload(events=args.events, seed=args.seed, producers=args.producers, categories=args.categories)
    persist_rows = args.persist_rows or max(1, args.events // (args.days * 24 * 2))
    work = Path(tempfile.mkdtemp(prefix="tributary-approx-"))
    data = args.keep or work / "node"
    try:
        _log(f"loading {workload.events:,} events over {args.days} days into {data}")
        load_avg = os.getloadavg()[0]
        loaded = load(data, workload, args.days, persist_rows) | {"load_avg": load_avg}
        _log(f"loaded in {loaded['load_s']:.1f} s; sizes {loaded['bytes']}")
        cells = measure(data, workload, loaded["span"], args.runs, args.seed)
        mem = {} if args.no_memory else memory(data, cells, loaded["span"])
        section = render(args, workload, loaded, cells, mem)
        update_results(args.results, _name(workload, args.days), section)
        print(section)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
