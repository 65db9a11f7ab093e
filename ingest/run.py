"""A run: buffered rows indexed by (category, timestamp), so any range is answered by two
binary searches instead of a scan.

A ``Run`` keeps the rows of one WAL record (or of several small ones merged) exactly as they
arrived, plus the permutation that sorts them by (category, timestamp), the timestamps in that
order and the prefix sums of ``value`` in that order. Count and sum of a category over any
``[start, end)`` are then ``j - i`` and ``csum[j] - csum[i]``, exact to the nanosecond with no
minute rollup and no DuckDB; top-k reads the producer ids of exactly the rows in range. Runs are
immutable and built outside every lock (on the request thread, before the WAL append).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from storage.ordering import lex_order, string_ranks
from storage.rollup import exact_sum, int64_sums_are_exact
from storage.schema import STORED_SCHEMA

__all__ = ["Run", "RunIndexError"]

Ints = npt.NDArray[Any]

_serials = itertools.count(1)


class RunIndexError(ValueError):
    """A run was asked for rows it cannot index (not STORED_SCHEMA); a programming error."""


@dataclass(frozen=True, eq=False)
class Run:
    """Rows in arrival order plus their (category, timestamp) index. Read-only."""

    rows: pa.Table  # STORED_SCHEMA, one chunk, arrival order
    order: Ints  # row positions sorted by (category, timestamp)
    ts: Ints  # timestamps in that order
    csum: Ints  # prefix sums of value in that order (len rows + 1); exact when ``exact``
    exact: bool  # sum(|value|) < 2**62, so every difference of ``csum`` is the exact sum
    spans: dict[str, tuple[int, int]]  # category -> [lo, hi) positions in that order
    min_ts: int
    max_ts: int
    serial: int = field(default_factory=lambda: next(_serials))  # names the run in caches

    @classmethod
    def build(cls, rows: pa.Table) -> Run:
        """Index STORED_SCHEMA ``rows`` (any order, any number of chunks)."""
        if rows.schema.names != STORED_SCHEMA.names:
            raise RunIndexError(f"a run takes STORED_SCHEMA rows, not {rows.schema.names}")
        rows = rows.combine_chunks()
        n = rows.num_rows
        ts = rows.column("timestamp").to_numpy()
        values = rows.column("value").to_numpy()
        if n == 0:
            empty = np.zeros(0, dtype=np.int64)
            return cls(rows, empty, empty, np.zeros(1, dtype=np.int64), True, {}, 0, -1)
        ranks, categories = string_ranks(rows.column("category"))
        order = lex_order(ranks, ts).astype(np.int32 if n < 1 << 31 else np.int64)
        bounds = np.concatenate(([0], np.cumsum(np.bincount(ranks, minlength=len(categories)))))
        spans = {str(c): (int(bounds[i]), int(bounds[i + 1])) for i, c in enumerate(categories.to_pylist())}
        exact = int64_sums_are_exact(values)
        csum = np.zeros(n + 1, dtype=np.int64)
        if exact:  # otherwise the prefix sums could wrap; sums are then computed from values
            np.cumsum(values[order], out=csum[1:])
        return cls(rows, order, ts[order], csum, exact, spans, int(ts.min()), int(ts.max()))

    @classmethod
    def merge(cls, runs: Sequence[Run]) -> Run:
        """One run holding the rows of ``runs`` (used to fold many small runs into one)."""
        return cls.build(pa.concat_tables([r.rows for r in runs]))

    @property
    def num_rows(self) -> int:
        return int(self.rows.num_rows)

    @property
    def nbytes(self) -> int:
        """Memory held: the rows plus the index."""
        return int(self.rows.nbytes + self.order.nbytes + self.ts.nbytes + self.csum.nbytes)

    def _positions(self, category: str, start: int, end: int) -> tuple[int, int]:
        """[i, j) in sorted order: the rows of ``category`` with ``start <= timestamp < end``."""
        span = self.spans.get(category)
        if span is None or start >= end or start > self.max_ts or end <= self.min_ts:
            return 0, 0
        lo, hi = span
        ts = self.ts[lo:hi]
        return lo + int(np.searchsorted(ts, start)), lo + int(np.searchsorted(ts, end))

    def _shard_mask(self, positions: Ints, shards: Ints) -> Ints:
        return np.isin(self.rows.column("shard").to_numpy()[positions], shards)

    def aggregate(self, category: str, start: int, end: int, shards: Ints | None = None) -> tuple[int, int]:
        """Exact (count, sum of value) of the rows of ``category`` in ``[start, end)``, limited
        to ``shards`` (a sorted integer array) when given."""
        i, j = self._positions(category, start, end)
        if i >= j:
            return 0, 0
        if shards is None:
            if self.exact:
                return j - i, int(self.csum[j]) - int(self.csum[i])
            return j - i, exact_sum(self.rows.column("value").to_numpy()[self.order[i:j]])
        positions = self.order[i:j]
        positions = positions[self._shard_mask(positions, shards)]
        return len(positions), exact_sum(self.rows.column("value").to_numpy()[positions])

    def covers(self, category: str, start: int, end: int) -> bool:
        """Whether every row of ``category`` in this run is inside ``[start, end)``."""
        span = self.spans.get(category)
        return span is not None and start <= self.ts[span[0]] and self.ts[span[1] - 1] < end

    def producer_ids(self, category: str, start: int, end: int, shards: Ints | None = None) -> pa.Array:
        """The producer id of every row of ``category`` in ``[start, end)`` (one per row)."""
        i, j = self._positions(category, start, end)
        positions = self.order[i:j]
        if shards is not None and len(positions):
            positions = positions[self._shard_mask(positions, shards)]
        return self.rows.column("producer_id").take(pa.array(positions)).combine_chunks()
