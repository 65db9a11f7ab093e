"""The live buffer: acknowledged rows not yet persisted as Parquet, queryable at once.

Rows sit in memory as Arrow record batches beside a per-(category, shard, minute) rollup that is
kept up to date on every append, so whole minutes of live data are answered without scanning
rows. The buffer is frozen and replaced when it is persisted; a query takes a ``BufferView`` of
the active and all frozen-but-not-yet-committed generations under one lock, so every row is seen
exactly once whether it is in memory or already in a committed part.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from storage.rollup import MERGE_MINUTE_SQL, MINUTE_ROLLUP_SQL
from storage.schema import STORED_SCHEMA

__all__ = ["MINUTE_ROLLUP_SCHEMA", "BufferView", "Generation", "LiveBuffer", "minute_rollup"]

MINUTE_ROLLUP_SCHEMA = pa.schema(
    [
        ("category", pa.string()),
        ("shard", pa.uint16()),
        ("minute", pa.int64()),
        ("count", pa.int64()),
        ("sum", pa.decimal128(38, 0)),
    ]
)

_rollup_con = threading.local()


def _con() -> duckdb.DuckDBPyConnection:
    con = getattr(_rollup_con, "con", None)
    if con is None:
        con = duckdb.connect(config={"threads": 1})
        _rollup_con.con = con
    return con


def minute_rollup(rows: pa.Table, *, merge: bool = False) -> pa.Table:
    """Minute rollup of STORED_SCHEMA rows (or, with ``merge``, re-aggregation of rollup rows)."""
    con = _con()
    con.register("rollup_src", rows)
    try:
        sql = (MERGE_MINUTE_SQL if merge else MINUTE_ROLLUP_SQL).format(src="rollup_src")
        return con.sql(sql).to_arrow_table().cast(MINUTE_ROLLUP_SCHEMA)
    finally:
        con.unregister("rollup_src")


@dataclass
class Generation:
    """One generation of the buffer: what was appended between two freezes."""

    batches: list[pa.RecordBatch] = field(default_factory=list)
    rollups: list[pa.Table] = field(default_factory=list)
    rows: int = 0
    nbytes: int = 0
    first_seq: int = 0
    last_seq: int = 0
    created: float = field(default_factory=time.monotonic)
    records: list[object] = field(default_factory=list)  # per-record context (idempotency keys)

    def table(self) -> pa.Table:
        return pa.Table.from_batches(self.batches, STORED_SCHEMA)


@dataclass(frozen=True)
class BufferView:
    """An immutable picture of the buffer for one query."""

    rows: pa.Table
    rollup: pa.Table

    @property
    def empty(self) -> bool:
        return self.rows.num_rows == 0


class LiveBuffer:
    """Active generation plus frozen generations waiting for their Parquet parts to commit."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, rollup_fanin: int = 32) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._active = Generation(created=clock())
        self._frozen: list[Generation] = []
        self._fanin = rollup_fanin

    def append(self, rows: pa.Table, rollup: pa.Table, seq: int, record: object = None) -> None:
        """Add durable rows (STORED_SCHEMA) with their precomputed minute rollup."""
        batches = rows.to_batches()
        with self._lock:
            g = self._active
            if not g.batches:
                g.first_seq = seq
                g.created = self._clock()
            g.batches.extend(batches)
            g.rollups.append(rollup)
            g.rows += rows.num_rows
            g.nbytes += rows.nbytes
            g.last_seq = seq
            if record is not None:
                g.records.append(record)
            if len(g.rollups) >= self._fanin:
                g.rollups = [minute_rollup(pa.concat_tables(g.rollups), merge=True)]

    @property
    def active_bytes(self) -> int:
        return self._active.nbytes

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._active.nbytes + sum(g.nbytes for g in self._frozen)

    @property
    def total_rows(self) -> int:
        with self._lock:
            return self._active.rows + sum(g.rows for g in self._frozen)

    def active_age(self) -> float:
        g = self._active
        return self._clock() - g.created if g.batches else 0.0

    def freeze(self) -> Generation | None:
        """Close the active generation for persisting; returns None when it is empty."""
        with self._lock:
            g = self._active
            if not g.batches:
                return None
            self._frozen.append(g)
            self._active = Generation(created=self._clock())
            return g

    def frozen(self) -> list[Generation]:
        with self._lock:
            return list(self._frozen)

    def release(self, g: Generation, commit: Callable[[], object]) -> None:
        """Run ``commit`` (the manifest commit of ``g``'s parts) and drop ``g`` atomically with
        respect to ``view``: no query sees ``g``'s rows twice or not at all."""
        with self._lock:
            commit()
            self._frozen.remove(g)

    def view(self, pin: Callable[[], object] | None = None) -> tuple[BufferView, object]:
        """The buffer as one table plus its rollup; ``pin`` runs under the same lock (it pins
        the manifest state that matches this view)."""
        with self._lock:
            gens = [*self._frozen, self._active]
            batches = [b for g in gens for b in g.batches]
            rollups = [r for g in gens for r in g.rollups]
            pinned = pin() if pin is not None else None
        rows = pa.Table.from_batches(batches, STORED_SCHEMA)
        rollup = pa.concat_tables(rollups) if rollups else MINUTE_ROLLUP_SCHEMA.empty_table()
        return BufferView(rows, rollup), pinned
