"""Workload W20: a seeded, reproducible day of events, cached as Parquet chunks.

W20 is the benchmark workload of issues 2 and 8: ``events`` events (20M by default) from
1M producers with Zipf popularity (s = 1.1), 20 categories chosen **uniformly**, values uniform
in 1..1000, timestamps spread over one fixed UTC day (2026-11-26) at nanosecond resolution, in
roughly increasing order the way a stream arrives: event ``i`` sits at ``i / events`` of the day
plus a uniform jitter of up to +-2 s, clipped to the day.

Guarantees: the same ``(events, seed)`` gives the same events, bit for bit, on any machine
(numpy's PCG64 seeded per chunk); generation is vectorised (no per-event Python), so 20M events
take seconds; the chunks are written once to ``bench/data/w20-<events>-<seed>/`` and reused, and
a directory is reused only if its ``_COMPLETE`` marker exists (written last, after a rename).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.schema import EVENT_SCHEMA

__all__ = ["DATA_ROOT", "DAY_NS", "DAY_START_NS", "Workload", "chunk_paths", "ensure"]

DATA_ROOT = Path(__file__).resolve().parent / "data"
DAY_NS = 86_400 * 1_000_000_000
# 2026-11-26T00:00:00Z: a fixed day in the past, so the server's future-window check never bites.
DAY_START_NS = 1_795_651_200 * 1_000_000_000
_MARKER = "_COMPLETE"


@dataclass(frozen=True)
class Workload:
    """The parameters of one generated workload; equal parameters give equal events."""

    events: int = 20_000_000
    seed: int = 1
    producers: int = 1_000_000
    zipf_s: float = 1.1
    categories: int = 20
    value_max: int = 1000
    day_start_ns: int = DAY_START_NS
    jitter_ns: int = 2_000_000_000
    chunk_rows: int = 1_000_000
    # Row groups are the unit the ingest clients read, so one group (or two) is one HTTP batch.
    row_group_rows: int = 50_000

    @property
    def name(self) -> str:
        return f"w20-{self.events}-{self.seed}"

    @property
    def category_names(self) -> list[str]:
        return [f"cat{i:02d}" for i in range(self.categories)]

    @property
    def day_end_ns(self) -> int:
        return self.day_start_ns + DAY_NS

    def chunks(self) -> Iterator[pa.Table]:
        """Yields the events in order as tables of ``chunk_rows`` rows (the last may be shorter)."""
        ranks_cdf = _zipf_cdf(self.producers, self.zipf_s)
        # Popularity rank -> producer index: a seeded permutation, so p000000 is not the hottest.
        rank_to_producer = np.random.default_rng([self.seed, 0xB1]).permutation(self.producers)
        producer_ids = pa.array([f"p{i:06d}" for i in range(self.producers)], pa.string())
        category_ids = pa.array(self.category_names, pa.string())
        step = DAY_NS / self.events
        for index, lo in enumerate(range(0, self.events, self.chunk_rows)):
            n = min(self.chunk_rows, self.events - lo)
            rng = np.random.default_rng([self.seed, index])
            ranks = np.searchsorted(ranks_cdf, rng.random(n), side="right")
            np.minimum(ranks, self.producers - 1, out=ranks)
            producers = pc.take(producer_ids, pa.array(rank_to_producer[ranks]))
            categories = pc.take(category_ids, pa.array(rng.integers(0, self.categories, n)))
            values = rng.integers(1, self.value_max + 1, n, dtype=np.int64)
            base = (np.arange(lo, lo + n, dtype=np.float64) * step).astype(np.int64)
            jitter = rng.integers(-self.jitter_ns, self.jitter_ns + 1, n, dtype=np.int64)
            offsets = np.clip(base + jitter, 0, DAY_NS - 1)
            timestamps = offsets + np.int64(self.day_start_ns)
            yield pa.Table.from_arrays(
                [pa.array(timestamps), categories, pa.array(values), producers], schema=EVENT_SCHEMA
            )


def _zipf_cdf(n: int, s: float) -> np.ndarray:
    """The CDF of a Zipf law bounded to ``n`` ranks (numpy's own sampler is unbounded)."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -s
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    return cdf


def ensure(workload: Workload, root: Path = DATA_ROOT) -> Path:
    """Returns the directory of the workload's Parquet chunks, generating them once.

    The files are ``part-00000.parquet``, ... in event order, zstd, with row groups of
    ``row_group_rows``. A half-written directory from a crash is never reused: generation
    writes to a temporary name and renames it when done.
    """
    final = root / workload.name
    if (final / _MARKER).exists():
        return final
    tmp = root / f".{workload.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for index, table in enumerate(workload.chunks()):
        pq.write_table(
            table,
            tmp / f"part-{index:05d}.parquet",
            row_group_size=workload.row_group_rows,
            compression="zstd",
        )
    (tmp / _MARKER).write_text(json.dumps(asdict(workload), indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def chunk_paths(directory: Path) -> list[Path]:
    """The workload's chunk files in event order."""
    return sorted(directory.glob("part-*.parquet"))
