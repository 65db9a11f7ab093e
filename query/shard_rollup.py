"""Count and sum of one part over any subset of its shards, without DuckDB.

A node asked by a coordinator for some of its shards (``cluster/reader.py`` asks the next node
for the shards the coordinator does not hold) sees parts whose shards are only partly wanted.
``PartIndex`` sums the minute rollup over shards, so it cannot answer those; ``PartShards``
keeps, per category, each shard's count and sum over the part's whole hour (a few KB per part)
and where the category's rows lie in the minute rollup file. A range covering the part's hour is
then a masked sum of those totals; a range covering part of it reads whichever is fewer rows —
the raw rows of the minutes it touches, or the category's per-shard minute rollup plus the raw
rows of the two ragged minutes — through the ``PartReader`` (a few row groups, cached), and
keeps the wanted shards. Raw rows are checked against the minutes asked for and the rollup rows
against the index's row count, so a file that disagrees raises ``UnusableIndex`` and the engine
answers that part with DuckDB: never a different answer, only a faster one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
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
    first: int  # the category's rows in the minute rollup file: [first, stop)
    stop: int
    counts: Ints  # rows of each of the part's shards over the whole hour
    sums: Ints  # their sums of value: int64, or Python ints when int64 could overflow


@dataclass(frozen=True, eq=False)
class PartShards:
    """Per-shard totals of one part, for count and sum over a subset of its shards."""

    part: Part
    rollup: str  # the minute rollup file, sorted by (category, shard, minute)
    shards: Ints  # the part's shards, ascending (the columns of every category's totals)
    categories: dict[str, _Cells]
    nbytes: int

    def aggregate(
        self, index: PartIndex, category: str, start: int, end: int, mask: ShardMask, reader: PartReader
    ) -> tuple[int, int]:
        """Exact (count, sum) of the part's rows of ``category`` in ``[start, end)`` whose shard
        is in ``mask``."""
        cm, cells = index.categories.get(category), self.categories.get(category)
        lo, hi = max(start, self.part.hour), min(end, self.part.hour + HOUR_NS)
        if cm is None or cells is None or lo >= hi or start > self.part.max_ts or end <= self.part.min_ts:
            return 0, 0
        if lo == self.part.hour and hi == self.part.hour + HOUR_NS:
            keep = mask.of(self.shards)
            return int(cells.counts[keep].sum()), _total(cells.sums[keep])
        first, stop = index.row_range(category, lo, hi)
        if stop - first <= cells.stop - cells.first:
            return self._raw(index, first, stop, lo, hi, mask, reader)
        m1, m2 = ceil_to(lo, MINUTE_NS), floor_to(hi, MINUTE_NS)  # m1 < m2: the rollup was cheaper
        cols = reader.columns(self.rollup, cells.first, cells.stop, ["shard", "minute", "count", "sum"])
        counts = cols["count"].to_numpy()
        if int(counts.sum()) != int(cm.rows[-1]):
            raise UnusableIndex(f"{self.rollup}: rows {cells.first}..{cells.stop} are not category {category!r}")
        minutes = cols["minute"].to_numpy()
        keep = (minutes >= m1) & (minutes < m2) & mask.of(cols["shard"].to_numpy())
        count = int(counts[keep].sum())
        total = pc.sum(cols["sum"].filter(pa.array(keep))).as_py()
        total = 0 if total is None else int(total)
        for a, b in ((lo, m1), (m2, hi)):
            if a < b:
                f, s = index.row_range(category, a, b)
                c, t = self._raw(index, f, s, a, b, mask, reader)
                count += c
                total += t
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
    path = part.path(root, "rollup_minute")
    table = pq.ParquetFile(path).read(columns=["category", "shard", "count", "sum"], use_threads=False)
    ranks, names = string_ranks(table.column("category"))
    shard_col = table.column("shard").to_numpy().astype(np.int64)
    shards = np.unique(shard_col)
    n = len(shards)
    cell = ranks * n + np.searchsorted(shards, shard_col)
    # Sorted by (category, shard, minute): each (category, shard) is one run of rows, and each
    # category one range of the file, which queries read through the PartReader.
    if len(cell) and bool(np.any(np.diff(cell) < 0)):
        raise UnusableIndex(f"{path} is not sorted by (category, shard)")
    runs = np.flatnonzero(np.diff(cell)) + 1 if len(cell) else np.zeros(0, dtype=np.int64)
    starts = np.concatenate(([0], runs)).astype(np.int64) if len(cell) else runs
    keys = cell[starts]
    counts = np.zeros(len(names) * n, dtype=np.int64)
    counts[keys] = np.add.reduceat(table.column("count").to_numpy(), starts) if len(cell) else 0
    sum_col = table.column("sum")
    try:
        values = sum_col.cast(pa.int64()).to_numpy()
        exact = int64_sums_are_exact(values)
    except pa.ArrowInvalid:  # a cell's sum is beyond int64
        exact = False
    if exact:
        sums: Ints = np.zeros(len(names) * n, dtype=np.int64)
        sums[keys] = np.add.reduceat(values, starts) if len(cell) else 0
    else:
        big = [int(v) for v in sum_col.to_pylist()]
        sums = np.zeros(len(names) * n, dtype=object)
        for key, a, b in zip(keys.tolist(), starts.tolist(), [*starts[1:].tolist(), len(big)], strict=True):
            sums[key] = sum(big[a:b])
    bounds = np.concatenate(([0], np.cumsum(np.bincount(ranks, minlength=len(names))))).astype(np.int64)
    categories = {}
    nbytes = 512 + shards.nbytes
    for r, name in enumerate(names.to_pylist()):
        c = _Cells(int(bounds[r]), int(bounds[r + 1]), counts[r * n : (r + 1) * n], sums[r * n : (r + 1) * n])
        categories[str(name)] = c
        nbytes += len(name) + 150 + c.counts.nbytes + (c.sums.nbytes if exact else 40 * n)
    return PartShards(part, str(path), shards, categories, nbytes)
