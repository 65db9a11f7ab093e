"""Holdings: which batches this node stores, per (shard, hour) — the unit of replication.

A *slice* is the rows of one batch in one (shard, hour). Slices are stored whole or not at all
(a forwarded write, a hint and a repair shipment all carry whole slices), so two replicas hold
the same rows of a (shard, hour) exactly when they hold the same set of batch ids there. That
set is summarised by a **digest**: the count of items and the sum modulo 2^64 of
``xxh64(hour, batch_id)`` over them — independent of arrival order, and unlike a XOR an item
seen twice cannot cancel out (sets hold each item once anyway). A shard's digest is the sum of
its hours' digests, so replicas compare shards first and hours only where shards differ.

Holdings also make storing idempotent at a replica: ``claim`` hands out only the slices not
held and not being stored right now, and waits for those in flight, so a batch retried through
another coordinator, a replayed hint and a repair shipment of the same slice store it once.

They are rebuilt at start from a small ``batches`` file written beside every part (a
``PartExtra``) plus the live buffer, and kept current from every durable WAL record.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from ingest.errors import Overloaded
from storage.manifest import ManifestState
from storage.schema import HOUR_NS

__all__ = ["BatchesExtra", "Holdings", "Slice", "item_hash"]

Slice = tuple[int, int, int]  # (shard, hour, batch_id)
_MASK = (1 << 64) - 1
_PAIR = struct.Struct("<qq")
_HOUR_SQL = f"timestamp - timestamp % {HOUR_NS}"  # the partition hour, exactly as storage computes it


def item_hash(hour: int, batch_id: int) -> int:
    return xxhash.xxh64_intdigest(_PAIR.pack(hour, batch_id))


def _fsync(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


class BatchesExtra:
    """``batches-<part>.parquet`` beside each part: (shard, hour, batch_id, rows) of its rows."""

    kind = "batches"

    def build(self, con: duckdb.DuckDBPyConnection, rows_relation: str, path: str) -> None:
        con.execute(
            f"COPY (SELECT shard, {_HOUR_SQL} AS hour, batch_id, count(*)::BIGINT AS rows "
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


class Holdings:
    """Thread-safe index of held slices with per-(shard, hour) digests and in-flight claims."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        # hour -> batch id -> bitmask of the shards it is held in: one entry per (hour, batch),
        # not per (shard, hour, batch) — a batch spans most shards, so a set per slice took
        # ~37 bytes x shards per batch (the soak run saw it grow by ~130 MB in 10 minutes).
        self._ids: dict[int, dict[int, int]] = {}
        self._digest: dict[tuple[int, int], tuple[int, int]] = {}  # (shard, hour) -> (sum, count)
        self._pending: list[pa.Table] = []  # durable rows not yet indexed
        self._inflight: set[Slice] = set()
        self._blocked: set[int] = set()  # shards being evicted: no claims meanwhile
        self._con = duckdb.connect(config={"threads": 1})
        self._con_lock = threading.Lock()

    # -- building -------------------------------------------------------------------------------

    def load(self, root: Path, state: ManifestState, buffer_rows: pa.Table) -> int:
        """Index every part of ``state`` and the buffer's rows; returns the slices indexed."""
        with_file = [str(root / p.files["batches"]) for p in state.parts if "batches" in p.files]
        without = [str(root / p.files["events"]) for p in state.parts if "batches" not in p.files]
        pieces = []
        if with_file:
            files = ", ".join(f"'{f}'" for f in with_file)
            pieces.append(f"SELECT shard, hour, batch_id FROM read_parquet([{files}], hive_partitioning = false)")
        if without:  # parts written before batch files existed: read the ids from the rows
            files = ", ".join(f"'{f}'" for f in without)
            pieces.append(
                f"SELECT shard, {_HOUR_SQL} AS hour, batch_id FROM read_parquet([{files}], hive_partitioning = false)"
            )
        found: list[Slice] = []
        if pieces:
            with self._con_lock:
                rows = self._con.sql("SELECT DISTINCT * FROM (" + " UNION ALL ".join(pieces) + ")").fetchall()
            found = [(int(s), int(h), int(b)) for s, h, b in rows]
        found += self.slices_of(buffer_rows)
        with self._cond:
            self._add(found)
        return len(found)

    def note(self, rows: pa.Table) -> None:
        """Durable rows just stored (called from the WAL writer: only queues them)."""
        with self._cond:
            self._pending.append(rows)

    def drain(self) -> None:
        """Index rows queued by ``note`` (done by every reader, and periodically)."""
        with self._cond:
            self._drain()

    def _drain(self) -> None:
        while self._pending:
            rows = self._pending.pop()
            self._add(self.slices_of(rows))

    def slices_of(self, rows: pa.Table) -> list[Slice]:
        """Distinct (shard, hour, batch_id) of STORED_SCHEMA rows."""
        if rows.num_rows == 0:
            return []
        bids = pc.unique(rows.column("batch_id"))
        if len(bids) == 1:  # the common case, one batch: numpy, no SQL
            ts = rows.column("timestamp").to_numpy()
            hours = ts - np.fmod(ts, HOUR_NS)  # C remainder, like DuckDB's: the same hour as storage
            # one int64 per (hour, shard): hour index * 2^16 + shard, unique-d in one pass
            keys = np.unique((hours // HOUR_NS) * 65_536 + rows.column("shard").to_numpy().astype(np.int64))
            b = int(bids[0].as_py())
            return [(int(k % 65_536), int(k // 65_536) * HOUR_NS, b) for k in keys.tolist()]
        with self._con_lock:
            self._con.register("slice_src", rows)
            try:
                got = self._con.sql(f"SELECT DISTINCT shard, {_HOUR_SQL}, batch_id FROM slice_src").fetchall()
            finally:
                self._con.unregister("slice_src")
        return [(int(s), int(h), int(b)) for s, h, b in got]

    def _add(self, slices: Iterable[Slice]) -> None:
        for s, h, b in slices:
            batches = self._ids.get(h)
            if batches is None:
                batches = self._ids[h] = {}
            held, bit = batches.get(b, 0), 1 << s
            if held & bit:
                continue
            batches[b] = held | bit
            total, n = self._digest.get((s, h), (0, 0))
            self._digest[(s, h)] = ((total + item_hash(h, b)) & _MASK, n + 1)

    # -- claims (idempotent storing at a replica) -----------------------------------------------

    def claim(self, slices: Collection[Slice], timeout: float = 60.0) -> list[Slice]:
        """The slices of ``slices`` not held, now reserved for the caller, who must ``release``
        them whether or not storing succeeded. Waits while any of them is being stored or its
        shard evicted; raises ``Overloaded`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                self._drain()
                if not any(x in self._inflight or x[0] in self._blocked for x in slices):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Overloaded("the same batch is being stored by another request", retry_after=1.0)
                self._cond.wait(left)
            new = [x for x in slices if not self._held(x)]
            self._inflight.update(new)
            return new

    def release(self, slices: Iterable[Slice]) -> None:
        """End a claim. Stored slices become held through ``note`` (the WAL hook) before the
        store returns, so a waiter that wakes finds them held."""
        with self._cond:
            self._inflight.difference_update(slices)
            self._cond.notify_all()

    def block(self, shards: Collection[int]) -> None:
        """Stop claims on ``shards`` and wait for those in flight (before evicting them)."""
        with self._cond:
            self._blocked.update(shards)
            while any(x[0] in self._blocked for x in self._inflight):
                self._cond.wait(1.0)

    def unblock(self, shards: Collection[int]) -> None:
        with self._cond:
            self._blocked.difference_update(shards)
            self._cond.notify_all()

    def forget(self, shards: Collection[int]) -> None:
        """Drop ``shards`` from the index (their rows were evicted)."""
        with self._cond:
            self._drain()
            gone = set(shards)
            mask = sum(1 << s for s in gone)
            for h, batches in list(self._ids.items()):
                for b, held in list(batches.items()):
                    if held & mask:
                        if held & ~mask:
                            batches[b] = held & ~mask
                        else:
                            del batches[b]
                if not batches:
                    del self._ids[h]
            for k in [k for k in self._digest if k[0] in gone]:
                del self._digest[k]

    def forget_through(self, hour: int) -> None:
        """Drop every hour up to and including ``hour`` (retention removed them)."""
        with self._cond:
            self._drain()
            for h in [h for h in self._ids if h <= hour]:
                del self._ids[h]
            for k in [k for k in self._digest if k[1] <= hour]:
                del self._digest[k]

    # -- reading --------------------------------------------------------------------------------

    def shards(self) -> list[int]:
        """Shards with at least one slice held."""
        with self._cond:
            self._drain()
            return sorted({s for (s, _h), (_, n) in self._digest.items() if n})

    def shard_digests(self, shards: Iterable[int] | None = None) -> dict[int, tuple[int, int]]:
        """(sum, count) per shard that holds anything, of ``shards`` (all when None)."""
        with self._cond:
            self._drain()
            wanted = None if shards is None else set(shards)
            out: dict[int, tuple[int, int]] = {}
            for (s, _h), (total, n) in self._digest.items():
                if wanted is None or s in wanted:
                    t0, n0 = out.get(s, (0, 0))
                    out[s] = ((t0 + total) & _MASK, n0 + n)
            return out

    def hour_digests(self, shards: Iterable[int]) -> dict[tuple[int, int], tuple[int, int]]:
        """(sum, count) per (shard, hour) held, of ``shards``."""
        wanted = set(shards)
        with self._cond:
            self._drain()
            return {k: v for k, v in self._digest.items() if k[0] in wanted}

    def batch_ids(self, slices: Iterable[tuple[int, int]]) -> dict[tuple[int, int], set[int]]:
        with self._cond:
            self._drain()
            return {(s, h): {b for b, held in self._ids.get(h, {}).items() if held >> s & 1} for s, h in slices}

    def holds(self, x: Slice) -> bool:
        with self._cond:
            self._drain()
            return self._held(x)

    def _held(self, x: Slice) -> bool:
        return bool(self._ids.get(x[1], {}).get(x[2], 0) >> x[0] & 1)

    def select(self, rows: pa.Table, slices: Collection[Slice]) -> pa.Table:
        """The rows of ``rows`` that belong to ``slices``."""
        if not slices:
            return rows.slice(0, 0)
        wanted = pa.table(
            {
                "w_shard": pa.array([s for s, _, _ in slices], pa.int64()),
                "w_hour": pa.array([h for _, h, _ in slices], pa.int64()),
                "w_batch": pa.array([b for _, _, b in slices], pa.int64()),
            }
        )
        with self._con_lock:
            self._con.register("sel_rows", rows)
            self._con.register("sel_want", wanted)
            try:
                out = self._con.sql(
                    f"SELECT r.* FROM sel_rows r SEMI JOIN sel_want w ON r.shard = w.w_shard "
                    f"AND r.batch_id = w.w_batch AND r.timestamp - r.timestamp % {HOUR_NS} = w.w_hour"
                ).to_arrow_table()
            finally:
                self._con.unregister("sel_rows")
                self._con.unregister("sel_want")
        return out.cast(rows.schema)
