"""The slice index of one hour: which (shard, batch) pairs are held there, in ~10 bytes each.

``HourIds`` keeps the pairs as two parallel numpy arrays sorted by (batch_id, shard) — an int64
and a uint16 per slice — plus a small ``fresh`` dict of recent additions (batch id -> shard
bitmask) that is merged into the arrays in chunks, so adding one slice costs a dict insert and
never an array copy. Lookups are a dict probe and a binary search.

The shard is kept beside each batch id (2 bytes more than the id alone) rather than looked up in
the batch files when a batch is found in the hour: then a claim never reads disk for a warm hour,
and slices still only in the live buffer need no second source of truth.

``read_hour`` rebuilds an hour from the ``batches-<part>.parquet`` files ``BatchesExtra`` writes
beside its parts (from the rows of older parts without one), and ``hour_digest`` computes an
hour's per-shard digests from its pairs with a vectorised xxh64
(``storage.xxh64.xxh64_int_pairs``), equal to summing ``holdings.item_hash`` per slice.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import numpy.typing as npt

from storage.manifest import Part
from storage.schema import HOUR_NS
from storage.xxh64 import xxh64_int_pairs

__all__ = ["HOUR_SQL", "BatchesExtra", "HourIds", "hour_digest", "read_hour"]

I64 = npt.NDArray[np.int64]
U16 = npt.NDArray[np.uint16]
U64 = npt.NDArray[np.uint64]

# What one fresh entry costs in CPython (dict slot, int key, int bitmask), counted in ``nbytes``
# so the budget covers the fresh dict too.
FRESH_ENTRY_BYTES = 120

HOUR_SQL = f"timestamp - timestamp % {HOUR_NS}"  # the partition hour, exactly as storage computes it


def _fsync(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


class BatchesExtra:
    """``batches-<part>.parquet`` beside each part: (shard, hour, batch_id, rows) of its rows."""

    kind = "batches"

    def build(self, con: duckdb.DuckDBPyConnection, rows_relation: str, path: str) -> None:
        con.execute(
            f"COPY (SELECT shard, {HOUR_SQL} AS hour, batch_id, count(*)::BIGINT AS rows "
            f"FROM {rows_relation} GROUP BY ALL ORDER BY ALL) TO '{path}' (FORMAT parquet)"
        )
        _fsync(path)

    def merge(self, con: duckdb.DuckDBPyConnection, paths: Sequence[str], path: str) -> None:
        files = ", ".join(f"'{p}'" for p in paths)
        con.execute(
            f"COPY (SELECT shard, hour, batch_id, sum(rows)::BIGINT AS rows FROM read_parquet([{files}], "
            f"hive_partitioning = false) GROUP BY ALL ORDER BY ALL) TO '{path}' (FORMAT parquet)"
        )
        _fsync(path)


def hour_digest(hour: int, batches: I64, shards: U16) -> dict[int, tuple[int, int]]:
    """Per shard, (sum mod 2^64 of the items' hashes, count) of distinct (batch, shard) pairs."""
    if not len(batches):
        return {}
    hashes = xxh64_int_pairs(hour, batches)
    idx = shards.astype(np.intp)
    sums = np.zeros(int(idx.max()) + 1, np.uint64)
    np.add.at(sums, idx, hashes)  # uint64 arithmetic wraps: the sum is taken mod 2^64
    counts = np.bincount(idx)
    return {int(s): (int(sums[s]), int(counts[s])) for s in np.flatnonzero(counts).tolist()}


def _sorted_unique(batches: I64, shards: U16) -> tuple[I64, U16]:
    if len(batches) > 1:
        order = np.lexsort((shards, batches))
        batches, shards = batches[order], shards[order]
        keep = np.ones(len(batches), bool)
        keep[1:] = (batches[1:] != batches[:-1]) | (shards[1:] != shards[:-1])
        if not keep.all():
            batches, shards = batches[keep], shards[keep]
    return np.ascontiguousarray(batches, np.int64), np.ascontiguousarray(shards, np.uint16)


class HourIds:
    """The (shard, batch) pairs held in one hour. Not thread-safe: ``Holdings`` locks it."""

    __slots__ = ("batches", "fresh", "shards")

    def __init__(self, batches: I64 | None = None, shards: U16 | None = None) -> None:
        """From pairs already sorted by (batch, shard) without repeats (``of`` takes any)."""
        self.batches: I64 = np.empty(0, np.int64) if batches is None else batches
        self.shards: U16 = np.empty(0, np.uint16) if shards is None else shards
        self.fresh: dict[int, int] = {}  # batch id -> bitmask of shards, not yet in the arrays

    @classmethod
    def of(cls, batches: Sequence[int] | I64, shards: Sequence[int] | U16) -> HourIds:
        """From pairs in any order, repeats allowed."""
        return cls(*_sorted_unique(np.asarray(batches, np.int64), np.asarray(shards, np.uint16)))

    @property
    def nbytes(self) -> int:
        return int(self.batches.nbytes + self.shards.nbytes) + FRESH_ENTRY_BYTES * len(self.fresh)

    def __len__(self) -> int:
        return len(self.batches) + sum(m.bit_count() for m in self.fresh.values())

    def _in_arrays(self, shard: int, batch: int) -> bool:
        b = self.batches
        lo = int(b.searchsorted(batch))  # the method, not np.searchsorted: this is the hot path
        if lo == len(b) or b[lo] != batch:
            return False
        hi = int(b.searchsorted(batch, "right"))
        return bool((self.shards[lo:hi] == shard).any())

    def has(self, shard: int, batch: int) -> bool:
        return bool(self.fresh.get(batch, 0) >> shard & 1) or self._in_arrays(shard, batch)

    def add(self, shard: int, batch: int) -> bool:
        """Add one pair; False if it was held already."""
        mask = self.fresh.get(batch, 0)
        bit = 1 << shard
        if mask & bit or (len(self.batches) and self._in_arrays(shard, batch)):
            return False
        self.fresh[batch] = mask | bit
        return True

    def compact(self) -> None:
        """Merge the fresh pairs into the arrays: one insertion pass, no re-sort of the arrays."""
        if not self.fresh:
            return
        nb: list[int] = []
        ns: list[int] = []
        for b, mask in self.fresh.items():
            while mask:
                low = mask & -mask
                nb.append(b)
                ns.append(low.bit_length() - 1)
                mask ^= low
        self.fresh = {}
        new_b, new_s = _sorted_unique(np.asarray(nb, np.int64), np.asarray(ns, np.uint16))
        lo = np.searchsorted(self.batches, new_b, "left")
        hi = np.searchsorted(self.batches, new_b, "right")
        pos = lo.copy()
        for i in np.flatnonzero(hi > lo).tolist():  # batch already held in other shards: rare
            pos[i] = lo[i] + int(np.searchsorted(self.shards[lo[i] : hi[i]], new_s[i]))
        self.batches = np.insert(self.batches, pos, new_b)
        self.shards = np.insert(self.shards, pos, new_s)

    def shard_batches(self, shard: int) -> set[int]:
        """Batch ids held in ``shard``."""
        out = set(self.batches[self.shards == shard].tolist())
        out.update(b for b, mask in self.fresh.items() if mask >> shard & 1)
        return out

    def drop_shards(self, shards: Iterable[int]) -> None:
        gone = sorted(set(shards))
        self.compact()
        keep = ~np.isin(self.shards, np.asarray(gone, np.uint16))
        if not keep.all():
            self.batches, self.shards = self.batches[keep], self.shards[keep]


def read_hour(con: duckdb.DuckDBPyConnection, root: Path, parts: Iterable[Part], hour: int) -> tuple[I64, U16]:
    """The distinct (batch, shard) pairs of ``hour`` in ``parts``, sorted by (batch, shard)."""
    mine = [p for p in parts if p.hour == hour]
    with_file = [str(root / p.files["batches"]) for p in mine if "batches" in p.files]
    without = [str(root / p.files["events"]) for p in mine if "batches" not in p.files]
    pieces = []
    if with_file:
        files = ", ".join(f"'{f}'" for f in with_file)
        pieces.append(
            f"SELECT batch_id, shard FROM read_parquet([{files}], hive_partitioning = false) WHERE hour = {hour}"
        )
    if without:  # parts written before batch files existed: read the ids from the rows
        files = ", ".join(f"'{f}'" for f in without)
        pieces.append(
            f"SELECT batch_id, shard FROM read_parquet([{files}], hive_partitioning = false) WHERE {HOUR_SQL} = {hour}"
        )
    if not pieces:
        return np.empty(0, np.int64), np.empty(0, np.uint16)
    sql = "SELECT DISTINCT batch_id, shard FROM (" + " UNION ALL ".join(pieces) + ") ORDER BY batch_id, shard"
    got: Any = con.sql(sql).fetchnumpy()
    return (
        np.ascontiguousarray(got["batch_id"], np.int64),
        np.ascontiguousarray(got["shard"], np.uint16),
    )
