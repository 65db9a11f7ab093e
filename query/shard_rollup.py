"""Count and sum of one part over any subset of its shards, without DuckDB.

A node asked by a coordinator for some of its shards (``cluster/reader.py`` asks the next node
for the shards the coordinator does not hold) sees parts whose shards are only partly wanted.
``PartIndex`` sums the minute rollup over shards, so it cannot answer those; ``PartShards``
keeps, per category, each shard's count and sum over the part's whole hour (a few KB per part).
A range covering the part's hour is a masked sum of those totals. A range covering part of it
reads the raw rows of the wanted category (sorted by time) through the ``PartReader`` and keeps
the wanted shards: the rows inside the range, or — when the range covers most of the hour — the
rows outside it, subtracted from the hour's totals; so at most half of the category's rows of
one hour are ever read, a row group or two. (The per-shard minute rollup would be fewer rows to
filter, but its file is one large row group: decoding it cost more than it saved, measured.)
Raw rows are checked against the minutes asked for, so a file that disagrees raises
``UnusableIndex`` and the engine answers that part with DuckDB: never a different answer, only a
faster one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from query.part_reader import PartReader
from query.rollup_cache import PartIndex, UnusableIndex
from query.timerange import ceil_to, floor_to
from storage.manifest import Part
from storage.ordering import string_ranks
from storage.rollup import exact_sum, int64_sums_are_exact
from storage.schema import HOUR_NS, MINUTE_NS

__all__ = ["PartShards", "ShardMask", "load_shards"]

Ints = npt.NDArray[Any]


class ShardMask:
    """A set of shards, as the sorted list and as a lookup table (shards are uint16), built
    once per query so every part tests its shards with one indexing, not a search."""

    def __init__(self, shards: Ints) -> None:
        self.shards = shards
        self.table = np.zeros(1 << 16, dtype=bool)
        self.table[shards[(shards >= 0) & (shards < 1 << 16)]] = True  # no stored shard is outside

    def of(self, shards: Ints) -> Ints:
        """Which of ``shards`` are in the set (a boolean mask)."""
        out: Ints = self.table[shards]
        return out


@dataclass(frozen=True, eq=False)
class _Cells:
    counts: Ints  # rows of each of the part's shards over the whole hour
    sums: Ints  # their sums of value: int64, or Python ints when int64 could overflow


@dataclass(frozen=True, eq=False)
class PartShards:
    """Per-shard totals of one part, for count and sum over a subset of its shards."""

    part: Part
    shards: Ints  # the part's shards, ascending (the columns of every category's totals)
    categories: dict[str, _Cells]
    nbytes: int

    def aggregate(
        self, index: PartIndex, category: str, start: int, end: int, mask: ShardMask, reader: PartReader
    ) -> tuple[int, int]:
        """Exact (count, sum) of the part's rows of ``category`` in ``[start, end)`` whose shard
        is in ``mask``."""
        cm, cells = index.categories.get(category), self.categories.get(category)
        hour, hour_end = self.part.hour, self.part.hour + HOUR_NS
        lo, hi = max(start, hour), min(end, hour_end)
        if cm is None or cells is None or lo >= hi or start > self.part.max_ts or end <= self.part.min_ts:
            return 0, 0
        inside = index.row_range(category, lo, hi)
        outside = [(a, b, index.row_range(category, a, b)) for a, b in ((hour, lo), (hi, hour_end)) if a < b]
        if inside[1] - inside[0] <= sum(r[1] - r[0] for _, _, r in outside):
            return self._raw(index, *inside, lo, hi, mask, reader)
        keep = mask.of(self.shards)
        count, total = int(cells.counts[keep].sum()), _total(cells.sums[keep])
        for a, b, (first, stop) in outside:
            c, t = self._raw(index, first, stop, a, b, mask, reader)
            count -= c
            total -= t
        return count, total

    @staticmethod
    def _raw(
        index: PartIndex, first: int, stop: int, a: int, b: int, mask: ShardMask, reader: PartReader
    ) -> tuple[int, int]:
        """Rows ``[first, stop)`` of the events file (one category's whole minutes around
        ``[a, b)``), counted when in ``[a, b)`` and of a wanted shard."""
        if first == stop:
            return 0, 0
        cols = reader.columns(index.events, first, stop, ["timestamp", "value", "shard"])
        ts = cols["timestamp"].to_numpy()
        if ts[0] < floor_to(a, MINUTE_NS) or ts[-1] >= ceil_to(b, MINUTE_NS):
            raise UnusableIndex(f"{index.events}: rows {first}..{stop} are not the minutes asked for")
        i, j = np.searchsorted(ts, [a, b])  # one category's rows are sorted by time
        keep = mask.of(cols["shard"].to_numpy()[i:j])
        return int(keep.sum()), exact_sum(cols["value"].to_numpy()[i:j][keep])


def _total(sums: Ints) -> int:
    return int(sums.sum()) if sums.dtype != object else sum(int(v) for v in sums)


def load_shards(part: Part, root: Path) -> PartShards:
    """The part's per-(category, shard) totals, from its minute rollup file."""
    table = pq.ParquetFile(part.path(root, "rollup_minute")).read(
        columns=["category", "shard", "count", "sum"], use_threads=False
    )
    cells = table.group_by(["category", "shard"], use_threads=False).aggregate([("count", "sum"), ("sum", "sum")])
    ranks, names = string_ranks(cells.column("category"))
    shard_col = cells.column("shard").to_numpy().astype(np.int64)
    shards = np.unique(shard_col)
    n = len(shards)
    at = ranks * n + np.searchsorted(shards, shard_col)
    counts = np.zeros(len(names) * n, dtype=np.int64)
    counts[at] = cells.column("count_sum").to_numpy()
    sum_col = cells.column("sum_sum")
    try:
        values = sum_col.cast(pa.int64()).to_numpy()
        exact = int64_sums_are_exact(values)
    except pa.ArrowInvalid:  # a cell's sum is beyond int64
        exact = False
    sums: Ints = np.zeros(len(names) * n, dtype=np.int64 if exact else object)
    sums[at] = values if exact else [int(v) for v in sum_col.to_pylist()]
    categories = {}
    nbytes = 512 + shards.nbytes
    for r, name in enumerate(names.to_pylist()):
        c = _Cells(counts[r * n : (r + 1) * n], sums[r * n : (r + 1) * n])
        categories[str(name)] = c
        nbytes += len(name) + 150 + c.counts.nbytes + (c.sums.nbytes if exact else 40 * n)
    return PartShards(part, shards, categories, nbytes)
