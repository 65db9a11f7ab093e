"""The benchmark's queries: the same random, unaligned ranges for Tributary and every peer.

A query is (kind, range length, category, start, end) with a half-open ``[start, end)`` in Unix
ns. Starts are uniform at nanosecond resolution, so ranges are never aligned to minutes or
hours: for 1 min and 1 h, anywhere inside the day; for 24 h, within the day's first hour (so a
24 h range holds 23-24 h of data). Categories are uniform. The list is shuffled once, so every
system sees the same queries in the same order and machine noise falls evenly on every cell.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.workload import DAY_NS, Workload, ensure

__all__ = [
    "KINDS",
    "RANGES",
    "Answer",
    "Cell",
    "Mismatch",
    "Query",
    "compare",
    "latency_cells",
    "make_queries",
    "percentile",
    "prepare",
]

KINDS = ("count", "sum", "topk")
RANGES = {"1min": 60 * 1_000_000_000, "1h": 3_600 * 1_000_000_000, "24h": DAY_NS}
TOPK = 10

# count and sum answer an int; topk a tuple of (producer_id, count), count desc then id asc.
Answer = Any


@dataclass(frozen=True)
class Query:
    kind: str
    range_name: str
    category: str
    start: int
    end: int


@dataclass(frozen=True)
class Cell:
    """Latency of one (kind, range) cell in milliseconds."""

    kind: str
    range_name: str
    p50_ms: float
    p95_ms: float
    n: int


@dataclass(frozen=True)
class Mismatch:
    query: Query
    expected: Answer
    got: Answer


def make_queries(workload: Workload, per_cell: int, seed: int) -> list[Query]:
    """``per_cell`` queries for each of the 9 (kind, range) cells, shuffled, seeded."""
    rng = random.Random(seed * 1_000_003 + 17)
    out = []
    for kind in KINDS:
        for range_name, length in RANGES.items():
            for _ in range(per_cell):
                room = max(DAY_NS - length, 3_600 * 1_000_000_000)
                start = workload.day_start_ns + rng.randrange(room)
                category = rng.choice(workload.category_names)
                out.append(Query(kind, range_name, category, start, start + length))
    rng.shuffle(out)
    return out


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks; exact for p50 of odd n."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def latency_cells(queries: list[Query], latencies_ms: list[float]) -> dict[tuple[str, str], Cell]:
    """p50 and p95 per (kind, range), from per-query latencies in query order."""
    grouped: dict[tuple[str, str], list[float]] = {}
    for query, ms in zip(queries, latencies_ms, strict=True):
        grouped.setdefault((query.kind, query.range_name), []).append(ms)
    return {
        key: Cell(key[0], key[1], percentile(values, 50), percentile(values, 95), len(values))
        for key, values in grouped.items()
    }


def compare(queries: list[Query], expected: list[Answer], got: list[Answer]) -> list[Mismatch]:
    """Every query whose answer differs from the expected one."""
    return [
        Mismatch(query, want, have) for query, want, have in zip(queries, expected, got, strict=True) if want != have
    ]


def prepare(events: int, seed: int, per_cell: int, log: Callable[[str], None]) -> tuple[Workload, Path, list[Query]]:
    """The W20 workload of ``events`` and ``seed`` (generated once, then cached), the directory of
    its Parquet chunks, and ``per_cell`` queries per (kind, range) over it."""
    workload = Workload(events=events, seed=seed)
    t0 = time.perf_counter()
    data = ensure(workload)
    log(f"workload {workload.name} ready in {time.perf_counter() - t0:.1f}s at {data}")
    return workload, data, make_queries(workload, per_cell, seed)
