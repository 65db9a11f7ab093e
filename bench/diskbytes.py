"""Bytes on disk per event by file kind on W20 density, and in-process count/sum/top-k latency (issue 8).

    uv run python -m bench.diskbytes                       # W20's first 4 hours (~3.3M events)
    uv run python -m bench.diskbytes --hours 24            # the whole 20M-event day
    uv run python -m bench.diskbytes --row-group-rows 8192 --queries 300

Sketch files cost a fixed amount per (category, shard, hour), so their bytes per event depend on
how many events each hour holds: this loads the first ``--hours`` whole hours of W20's 20M-event
day (``bench.workload``, about 833k events an hour), not a smaller W20, so the per-event figures
match the full run's. Events go into an in-process ``cluster.Node`` (WAL fsync off) in 50k-event
batches, persisted every ``--persist-rows`` events (the persister writes a generation in pieces of
16 MiB, so that is about five parts an hour), then compacted as ``--compaction`` says: ``server``
(default) merges what the server's compactor would (``CompactionConfig`` defaults: hours of four
parts or more), ``none`` leaves the parts as persisted, ``all`` merges every hour into one part
(fewer, larger sketch groups: fewer bytes per event).

Latency is the wall time of ``Node.aggregate`` (count and sum) and ``Node.topk`` (k = 10) in this
process, no HTTP, on ``--queries`` random ranges each (random category, nanosecond start and
length from one minute to the span loaded), after a warm-up; p50 and p95. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.server import bytes_by_kind
from bench.workload import Workload, chunk_paths, ensure
from cluster.node import Node, NodeConfig
from ingest.errors import Overloaded
from ingest.persister import PersistConfig
from ingest.wal import WalConfig
from storage.partition import PartitionConfig
from storage.schema import HOUR_NS, MINUTE_NS

__all__ = ["main"]


def load(args: argparse.Namespace, data: Path, workload: Workload) -> tuple[Node, int, int, int]:
    """A node over ``data`` holding the first ``args.hours`` hours of ``workload``: (node,
    events, end of the span, persists made early because the live buffer was full)."""
    # Persisting and compacting happen when this script says, never in the background.
    config = NodeConfig(
        data_dir=data,
        wal=WalConfig(fsync=False),
        persist=PersistConfig(max_bytes=1 << 40, max_age_s=1e9),
        partition=PartitionConfig(row_group_rows=args.row_group_rows),
        compact_every_s=1e9,
    )
    node = Node(config)
    end = workload.day_start_ns + args.hours * HOUR_NS
    events = pending = overloads = 0
    for path in chunk_paths(ensure(workload)):
        chunk = pq.read_table(path)
        chunk = chunk.filter(pc.less(chunk["timestamp"], end))
        for lo in range(0, chunk.num_rows, 50_000):
            while True:
                try:
                    accepted = node.ingest(chunk.slice(lo, 50_000)).accepted
                    break
                except Overloaded:  # what a client's retry after 429 amounts to
                    node.persist_now()
                    pending = 0
                    overloads += 1
            events += accepted
            pending += accepted
            if pending >= args.persist_rows:
                node.persist_now()
                pending = 0
        if chunk.num_rows == 0:
            break
    node.persist_now()
    if args.compaction != "none":
        node.compact_now(force=args.compaction == "all")
    return node, events, end, overloads


def latency(node: Node, workload: Workload, end: int, queries: int, seed: int = 8) -> dict[str, tuple[float, float]]:
    """p50 and p95 in ms of count/sum and top-k over random unaligned ranges."""
    rng = np.random.default_rng(seed)
    span = end - workload.day_start_ns
    categories = workload.category_names
    ask: dict[str, Callable[[str, int, int], object]] = {
        "count/sum": lambda c, a, b: node.aggregate(c, a, b),
        "topk": lambda c, a, b: node.topk(c, a, b, 10),
    }
    out: dict[str, tuple[float, float]] = {}
    for name, run in ask.items():
        times: list[float] = []
        for i in range(queries + 1):
            length = int(rng.integers(MINUTE_NS, span))
            start = workload.day_start_ns + int(rng.integers(0, span - length + 1))
            t0 = time.perf_counter()
            run(categories[int(rng.integers(0, len(categories)))], start, start + length)
            if i:  # the first one warms the caches up
                times.append((time.perf_counter() - t0) * 1e3)
        cuts = statistics.quantiles(times, n=20)
        out[name] = (statistics.median(times), cuts[18])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=int, default=4, help="whole hours of W20's day to load (1..24)")
    parser.add_argument("--row-group-rows", type=int, default=PartitionConfig().row_group_rows)
    parser.add_argument("--persist-rows", type=int, default=800_000, help="events per persisted buffer")
    parser.add_argument("--compaction", choices=["server", "none", "all"], default="server", help="see above")
    parser.add_argument("--queries", type=int, default=200, help="ranges per query kind (0: no latency)")
    args = parser.parse_args()
    workload = Workload()
    with tempfile.TemporaryDirectory(prefix="tributary-diskbytes-") as tmp:
        data = Path(tmp)
        t0 = time.perf_counter()
        node, events, end, overloads = load(args, data, workload)
        parts = len(node.manifest.state.parts)
        print(
            f"loaded {events:,} events ({args.hours} h of {workload.name}) in {time.perf_counter() - t0:.0f} s: "
            f"{parts} parts, {overloads} early persists (buffer full)"
        )
        by_kind = bytes_by_kind(data)
        for kind, n in sorted(by_kind.items()):
            print(f"  {kind:<16} {n / events:6.3f} B/event")
        print(f"  {'total':<16} {sum(by_kind.values()) / events:6.3f} B/event")
        if args.queries:
            for name, (p50, p95) in latency(node, workload, end, args.queries).items():
                print(
                    f"  {name:<10} p50 {p50:.2f} ms  p95 {p95:.2f} ms (in-process, row groups {args.row_group_rows:,})"
                )
        node.close(persist=False)


if __name__ == "__main__":
    main()
