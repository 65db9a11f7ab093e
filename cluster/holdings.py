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

Memory stays bounded: digests (one per (shard, hour)) are always in memory; the slices
themselves are kept per hour in compact arrays (``cluster.sliceindex``, ~10 bytes a slice), and
when they pass ``HoldingsConfig.max_bytes`` the least recently used hours leave memory. Such a
*cold* hour is read back from the ``batches`` files of its parts (a ``PartExtra`` written beside
every part) the next time a question needs it. An hour leaves memory only once every slice noted
for it is in a published part (its last WAL sequence noted is persisted), so the files hold all
of it; on reading it back its digests are recomputed from the files, which also counts slices
whose notes are still queued.
"""

from __future__ import annotations

import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from cluster.sliceindex import FRESH_ENTRY_BYTES, HOUR_SQL, BatchesExtra, HourIds, hour_digest, read_hour
from ingest.errors import Overloaded
from storage.manifest import Manifest, ManifestState
from storage.partition import storage_cursor
from storage.schema import HOUR_NS

__all__ = ["BatchesExtra", "Holdings", "HoldingsConfig", "Slice", "item_hash"]

Slice = tuple[int, int, int]  # (shard, hour, batch_id)
_MASK = (1 << 64) - 1
_PAIR = struct.Struct("<qq")
_UNPERSISTED = 2**63 - 1  # the WAL sequence of slices with no part behind them (they never go cold)


def item_hash(hour: int, batch_id: int) -> int:
    return xxhash.xxh64_intdigest(_PAIR.pack(hour, batch_id))


@dataclass(frozen=True)
class HoldingsConfig:
    """Memory of the slice index. Hours past ``max_bytes`` are reread from disk when needed; the
    hour in use is always kept, so set it to hold at least two hours of your batch rate
    (~10 bytes per (shard, hour, batch) slice)."""

    max_bytes: int = 64 << 20
    fresh_entries: int = 65_536  # recent additions kept in dicts before merging into the arrays


class Holdings:
    """Thread-safe index of held slices with per-(shard, hour) digests and in-flight claims.

    With a ``manifest`` hours may go cold and are read back from its parts; without one (tests)
    everything stays in memory."""

    def __init__(
        self,
        config: HoldingsConfig | None = None,
        manifest: Manifest | None = None,
        db: duckdb.DuckDBPyConnection | None = None,
    ) -> None:
        self.config = config or HoldingsConfig()
        self._manifest = manifest
        self._cond = threading.Condition()
        self._hours: OrderedDict[int, HourIds] = OrderedDict()  # warm hours, least recently used first
        self._cold: set[int] = set()  # hours held on disk only
        self._seq: dict[int, int] = {}  # warm hour -> highest WAL sequence noted for it
        self._bytes = 0  # of the warm hours
        self._fresh = 0  # fresh entries added since the last merge
        self._digest: dict[int, dict[int, tuple[int, int]]] = {}  # hour -> shard -> (sum, count)
        self._notes = threading.Lock()  # only for _pending: the WAL writer never waits on a read
        self._pending: list[tuple[pa.Table, int]] = []  # durable rows not yet indexed, with their seq
        self._inflight: set[Slice] = set()
        self._blocked: set[int] = set()  # shards being evicted: no claims meanwhile
        # A cursor of the node's storage database (``storage.partition.storage_db``), or alone.
        self._con = duckdb.connect(config={"threads": 1}) if db is None else storage_cursor(db)
        self._con_lock = threading.Lock()
        self.reloads = 0  # cold hours read back from disk

    # -- building -------------------------------------------------------------------------------

    def load(self, root: Path, state: ManifestState, buffer_rows: pa.Table, seq: int = _UNPERSISTED) -> int:
        """Index every part of ``state`` and the buffer's rows (WAL sequences up to ``seq``), one
        hour at a time, newest first; hours past the byte budget stay on disk. Returns the
        slices indexed."""
        live: dict[int, list[tuple[int, int]]] = {}
        for shard, h, batch in self.slices_of(buffer_rows):
            live.setdefault(h, []).append((batch, shard))
        by_hour = state.hours()
        found = 0
        warm: list[tuple[int, HourIds]] = []
        used = 0
        for hour in sorted(by_hour.keys() | live.keys(), reverse=True):
            with self._con_lock:
                b, s = read_hour(self._con, root, by_hour.get(hour, []), hour)
            extra = live.get(hour, [])
            if extra:
                b = np.concatenate([b, np.asarray([x[0] for x in extra], np.int64)])
                s = np.concatenate([s, np.asarray([x[1] for x in extra], np.uint16)])
            ids = HourIds.of(b, s)
            found += len(ids)
            digest = hour_digest(hour, ids.batches, ids.shards)
            with self._cond:
                if digest:
                    self._digest[hour] = digest
                if hour in live or used + ids.nbytes <= self.config.max_bytes or self._manifest is None:
                    used += ids.nbytes
                    warm.append((hour, ids))
                else:
                    self._cold.add(hour)
        with self._cond:
            for hour, ids in reversed(warm):  # oldest first: the newest are the most recently used
                self._hours[hour] = ids
                self._seq[hour] = seq if hour in live else 0
                self._bytes += ids.nbytes
        return found

    def note(self, rows: pa.Table, seq: int = _UNPERSISTED) -> None:
        """Durable rows just stored, WAL sequence ``seq`` (called from the WAL writer: only
        queues them, under a lock no reader holds while reading disk)."""
        with self._notes:
            self._pending.append((rows, seq))

    def drain(self) -> None:
        """Index rows queued by ``note`` (done by every reader, and periodically)."""
        with self._cond:
            self._drain()

    def _drain(self) -> None:
        with self._notes:
            todo, self._pending = self._pending, []
        for rows, seq in todo:
            self._add(self.slices_of(rows), seq)
        self._trim()

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
                got = self._con.sql(f"SELECT DISTINCT shard, {HOUR_SQL}, batch_id FROM slice_src").fetchall()
            finally:
                self._con.unregister("slice_src")
        return [(int(s), int(h), int(b)) for s, h, b in got]

    def _add(self, slices: Iterable[Slice], seq: int = _UNPERSISTED) -> None:
        hour: int | None = None
        ids = HourIds()
        for s, h, b in slices:
            if h != hour:  # slices come grouped by hour: look the hour up once per run
                got = self._warm(h, create=True)
                assert got is not None
                hour, ids = h, got
                if seq > self._seq.get(h, 0):
                    self._seq[h] = seq
            fresh = len(ids.fresh)
            if not ids.add(s, b):
                continue
            self._bytes += FRESH_ENTRY_BYTES * (len(ids.fresh) - fresh)
            self._fresh += 1
            shards = self._digest.setdefault(h, {})
            total, n = shards.get(s, (0, 0))
            shards[s] = ((total + item_hash(h, b)) & _MASK, n + 1)
        if self._fresh > self.config.fresh_entries:
            for ids in self._hours.values():
                before = ids.nbytes
                ids.compact()
                self._bytes += ids.nbytes - before
            self._fresh = 0

    def _warm(self, hour: int, *, create: bool = False) -> HourIds | None:
        """The hour's slices in memory, read back from disk if cold; None if none are held
        (unless ``create``)."""
        ids = self._hours.get(hour)
        if ids is not None:
            self._hours.move_to_end(hour)
            return ids
        if hour in self._cold:
            ids = self._reload(hour)
        elif create:
            ids = HourIds()
        else:
            return None
        self._hours[hour] = ids
        self._bytes += ids.nbytes
        return ids

    def _reload(self, hour: int) -> HourIds:
        assert self._manifest is not None
        with self._manifest.pin() as state, self._con_lock:
            b, s = read_hour(self._con, self._manifest.root, state.hours().get(hour, []), hour)
        ids = HourIds(b, s)
        # The files are the truth for a cold hour: every slice noted before it went cold is in
        # them, and slices whose notes are still queued may be too (then they count here, and
        # their notes find them held).
        digest = hour_digest(hour, b, s)
        if digest:
            self._digest[hour] = digest
        else:
            self._digest.pop(hour, None)
        self._cold.discard(hour)
        self._seq[hour] = 0
        self.reloads += 1
        return ids

    def _trim(self) -> None:
        """Send least recently used hours to disk until under budget; never the hour in use,
        nor one with slices not yet in a published part."""
        if self._bytes <= self.config.max_bytes or self._manifest is None:
            return
        persisted = self._manifest.state.wal_seq
        for hour in list(self._hours)[:-1]:
            if self._seq.get(hour, 0) > persisted:
                continue
            ids = self._hours.pop(hour)
            self._bytes -= ids.nbytes
            self._seq.pop(hour, None)
            self._cold.add(hour)
            if self._bytes <= self.config.max_bytes:
                break

    @property
    def nbytes(self) -> int:
        """Bytes of the slice ids in memory (the budget's measure; digests not included). Read
        without the lock, for metrics: an int read is atomic."""
        return self._bytes

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
            self._trim()
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
        """Drop ``shards`` from the index (their rows were evicted from disk: cold hours read
        back later no longer have them)."""
        with self._cond:
            self._drain()
            gone = set(shards)
            for ids in self._hours.values():
                before = ids.nbytes
                ids.drop_shards(gone)
                self._bytes += ids.nbytes - before
            for hour, digest in list(self._digest.items()):
                for s in gone & digest.keys():
                    del digest[s]
                if not digest:
                    self._drop_hour(hour)

    def forget_through(self, hour: int) -> None:
        """Drop every hour up to and including ``hour`` (retention removed them)."""
        with self._cond:
            self._drain()
            for h in [h for h in self._hours.keys() | self._cold | self._digest.keys() if h <= hour]:
                self._drop_hour(h)

    def _drop_hour(self, hour: int) -> None:
        ids = self._hours.pop(hour, None)
        if ids is not None:
            self._bytes -= ids.nbytes
        self._cold.discard(hour)
        self._seq.pop(hour, None)
        self._digest.pop(hour, None)

    # -- reading --------------------------------------------------------------------------------

    def shards(self) -> list[int]:
        """Shards with at least one slice held."""
        with self._cond:
            self._drain()
            return sorted({s for digest in self._digest.values() for s, (_, n) in digest.items() if n})

    def shard_digests(self, shards: Iterable[int] | None = None) -> dict[int, tuple[int, int]]:
        """(sum, count) per shard that holds anything, of ``shards`` (all when None)."""
        with self._cond:
            self._drain()
            wanted = None if shards is None else set(shards)
            out: dict[int, tuple[int, int]] = {}
            for digest in self._digest.values():
                for s, (total, n) in digest.items():
                    if wanted is None or s in wanted:
                        t0, n0 = out.get(s, (0, 0))
                        out[s] = ((t0 + total) & _MASK, n0 + n)
            return out

    def hour_digests(self, shards: Iterable[int]) -> dict[tuple[int, int], tuple[int, int]]:
        """(sum, count) per (shard, hour) held, of ``shards``."""
        wanted = set(shards)
        with self._cond:
            self._drain()
            return {(s, h): v for h, digest in self._digest.items() for s, v in digest.items() if s in wanted}

    def batch_ids(self, slices: Iterable[tuple[int, int]]) -> dict[tuple[int, int], set[int]]:
        """The batch ids held per (shard, hour), cold hours read back from disk."""
        with self._cond:
            self._drain()
            out: dict[tuple[int, int], set[int]] = {}
            for s, h in slices:
                ids = self._warm(h)
                out[(s, h)] = ids.shard_batches(s) if ids is not None else set()
            self._trim()
            return out

    def holds(self, x: Slice) -> bool:
        with self._cond:
            self._drain()
            held = self._held(x)
            self._trim()
            return held

    def _held(self, x: Slice) -> bool:
        ids = self._warm(x[1])
        return ids is not None and ids.has(x[0], x[2])

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
