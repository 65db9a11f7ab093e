"""``just bench``: workload W20 through Tributary's HTTP API, beside DuckDB and chdb, in one run.

    uv run python -m bench.run                      # the full W20 (20M events)
    uv run python -m bench.run --events 1000000     # quick mode, a few minutes

Steps: generate (or reuse) the workload; draw the queries; load and query each peer in its own
process and check that the peers agree on every answer (they are each other's oracle: the run
aborts on any disagreement); start ``tributary serve`` on a fresh data directory, ingest a JSON
slice, an NDJSON slice and the rest as Arrow IPC (every event exactly once, so the server holds
the same events as the peers), run the same queries and compare with the peers; then write the
section of ``bench/RESULTS.md`` and the chart. Exit status 1 if Tributary answered wrongly.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from bench import loader
from bench.peers import PEERS, PeerResult, run_peer_isolated
from bench.queries import Cell, Query, compare, latency_cells, percentile, prepare
from bench.report import RunReport, TributaryReport, add_section_options, chart, render, update_results
from bench.server import ServerProcess, disk_usage, node_stats, wait_compacted, wait_persisted
from bench.workload import Workload, chunk_paths

__all__ = ["main"]

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
DEFAULT_EVENTS = Workload().events


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="workload size (default 20M)")
    p.add_argument("--seed", type=int, default=1, help="workload and query seed")
    p.add_argument("--queries", type=int, default=50, help="queries per (kind, range) cell")
    p.add_argument("--clients", type=int, default=3, help="concurrent ingest client processes")
    p.add_argument(
        "--text-events",
        type=int,
        default=2_000_000,
        help="events ingested as JSON, and again as many as NDJSON (capped at events/5)",
    )
    p.add_argument("--skip-tributary", action="store_true", help="peers only")
    p.add_argument("--skip-chdb", action="store_true", help="no chdb peer")
    add_section_options(p)
    return p.parse_args(argv)


def _run_peers(workload: Workload, data: Path, queries: list[Query], names: list[str]) -> dict[str, PeerResult]:
    results: dict[str, PeerResult] = {}
    for name in names:
        _log(f"peer {name}: loading {workload.events:,} events and running {len(queries)} queries")
        results[name] = r = run_peer_isolated(name, data, OUT_DIR / workload.name / "peers" / name, queries)
        _log(f"peer {name}: loaded in {r.load_s:.1f}s, {r.disk_bytes / r.events:.1f} B/event on disk")
        if r.events != workload.events:
            raise SystemExit(f"BENCH ABORTED: {name} loaded {r.events} events, expected {workload.events}")
    names = list(results)
    for other in names[1:]:
        bad = compare(queries, results[names[0]].answers, results[other].answers)
        if bad:
            details = "\n".join(f"  {m.query}: {names[0]}={m.expected!r} {other}={m.got!r}" for m in bad[:10])
            raise SystemExit(f"BENCH ABORTED: {other} disagrees with {names[0]} on {len(bad)} queries:\n{details}")
    return results


def batch_rows(workload: Workload, fmt: str) -> int:
    """Events in one request body: two row groups of the workload as Arrow, one as JSON or NDJSON."""
    return workload.row_group_rows * (2 if fmt == "arrow" else 1)


def _slices(workload: Workload, text_events: int) -> list[tuple[str, int, int, int]]:
    """(format, first row, rows, batch rows): a JSON slice, an NDJSON slice, the rest as Arrow."""
    group = workload.row_group_rows
    text = min(text_events, workload.events // 5) // group * group
    return [
        ("json", 0, text, batch_rows(workload, "json")),
        ("ndjson", text, text, batch_rows(workload, "ndjson")),
        ("arrow", 2 * text, workload.events - 2 * text, batch_rows(workload, "arrow")),
    ]


def _run_tributary(
    workload: Workload, data: Path, queries: list[Query], expected: list[object], args: argparse.Namespace
) -> TributaryReport:
    data_dir = OUT_DIR / workload.name / "tributary-data"
    shutil.rmtree(data_dir, ignore_errors=True)
    paths = chunk_paths(data)
    server = ServerProcess(data_dir, command=args.server_cmd)
    with loader.ClientPool(server.url, args.clients) as clients:
        plans = [
            loader.plan(paths, first, rows, batch_rows, fmt, data / "bodies", workload.name)
            for fmt, first, rows, batch_rows in _slices(workload, args.text_events)
            if rows > 0
        ]
        t0 = time.perf_counter()
        body_bytes = sum(clients.prepare(batches) for batches in plans)
        _log(f"tributary: {body_bytes / 1e6:.0f} MB of request bodies ready in {time.perf_counter() - t0:.1f}s")
        _log(f"tributary: starting `{args.server_cmd.format(port=server.port, data=data_dir)}`")
        sampler = server.start_sampled()
        try:
            sampler.enter("ingest")
            ingest = {}
            for batches in plans:
                result = ingest[batches[0].fmt] = clients.ingest(batches)
                _log(
                    f"tributary: {result.fmt} ingest {result.events:,} events in {result.seconds:.2f}s = "
                    f"{result.events_per_s / 1e6:.2f}M events/s ({result.retries} retries)"
                )
            settle_s = wait_persisted([server.url])
            _log(f"tributary: everything acknowledged was persisted {settle_s} s after the last ingest")
            disk_loaded = disk_usage(data_dir)
            loaded_stats = node_stats(server.url)
            # Loaded as the peers are when they are queried: their loads end with their data at
            # rest, so ours ends once the background compaction of the persisted parts settles.
            sampler.enter("settle")
            compacted_s = wait_compacted([server.url])
            _log(f"tributary: background compaction settled {compacted_s} s after the last persist")
            stats = node_stats(server.url)
            sampler.enter("queries")
            run = loader.run_queries(server.url, queries)
            mismatches = compare(queries, expected, run.answers)
            _log(f"tributary: {len(queries)} queries, {len(mismatches)} mismatches against the peers")
            disk_running = disk_usage(data_dir)
            sampler.enter("stop")
        finally:
            code = server.stop()
            peaks = sampler.close()
    mib = {phase: rss >> 20 for phase, rss in peaks.items()}
    _log(f"tributary: stopped with exit code {code}; RSS peaks in MiB {mib}")
    peaks.pop("stop", None)  # shutdown (a final persist) is neither loading nor serving
    return TributaryReport(
        ingest=ingest,
        cells=latency_cells(queries, run.latencies_ms),
        took_cells=_took_cells(queries, run.took_ms),
        http_floor_ms=percentile(run.floor_ms, 50) if run.floor_ms else None,
        rss_peaks=peaks,
        disk_loaded=disk_loaded,
        disk_running=disk_running,
        disk_stopped=disk_usage(data_dir),
        events=workload.events,
        mismatches=mismatches,
        queries=len(queries),
        stats=stats,
        stop_code=code,
        settle_s=settle_s,
        compacted_s=compacted_s,
        parts_loaded=None if loaded_stats is None else _int(loaded_stats.get("parts")),
    )


def _took_cells(queries: list[Query], took_ms: list[float]) -> dict[tuple[str, str], Cell]:
    """The server's own ``took_ms`` per cell, over the queries that reported one."""
    pairs = [(q, t) for q, t in zip(queries, took_ms, strict=True) if not math.isnan(t)]
    return latency_cells([q for q, _ in pairs], [t for _, t in pairs]) if pairs else {}


def _int(value: object) -> int | None:
    return value if isinstance(value, int) else None


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    load_start = os.getloadavg()[0]
    workload, data, queries = prepare(args.events, args.seed, args.queries, _log)
    names = [p for p in PEERS if not (args.skip_chdb and p == "chdb")]
    peers = _run_peers(workload, data, queries, names)
    _log(f"peers agree on all {len(queries)} answers")
    expected = peers[names[0]].answers
    tributary = None if args.skip_tributary else _run_tributary(workload, data, queries, expected, args)
    # The chart in bench/ goes with the default run's section of bench/RESULTS.md; a run written
    # elsewhere (an A/B's other half, ``--results``) keeps its chart under bench/out.
    is_default = (
        workload.events == DEFAULT_EVENTS
        and args.seed == 1
        and args.results.resolve() == (BENCH_DIR / "RESULTS.md").resolve()
    )
    chart_path = BENCH_DIR / "latency.png" if is_default else OUT_DIR / f"latency-{workload.name}.png"
    report = RunReport(
        name=workload.name,
        events=workload.events,
        seed=args.seed,
        command=" ".join(
            ["uv run python -m bench.run", shlex.join(argv if argv is not None else sys.argv[1:])]
        ).strip(),
        queries_per_cell=args.queries,
        peers=peers,
        peer_cells={n: latency_cells(queries, r.latencies_ms) for n, r in peers.items()},
        tributary=tributary,
        chart_path=chart_path.relative_to(BENCH_DIR.parent),
        notes=[
            f"load average (1 min) at start {load_start:.1f}, at end {os.getloadavg()[0]:.1f} "
            f"on {os.cpu_count()} cores: other work on the machine inflates every figure",
            *args.note,
        ],
    )
    chart(chart_path, report)
    update_results(args.results, workload.name, render(report))
    _log(f"wrote {args.results} and {chart_path}")
    if tributary and tributary.mismatches:
        _log(f"TRIBUTARY ANSWERED {len(tributary.mismatches)} QUERIES WRONGLY; see {args.results}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
