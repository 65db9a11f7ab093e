"""Answering count, sum and top-k exactly.

For ``[start, end)`` the whole minutes come from minute rollups, the whole hours of a top-k
from producer rollups, and only the ragged edges from raw rows — in the Parquet parts and in
the live buffer alike. A query reads one ``Snapshot``: the manifest state pinned together with
the buffer generations not yet committed, taken under the buffer's lock, so a row is counted
exactly once while persists and compactions run beside it.

Most answers never reach DuckDB: the buffer answers from its runs' indexes and the parts from
their in-memory rollup indexes (``query/indexes.py``). DuckDB answers, in one statement, only
what those cannot: parts in an older layout, shard subsets that split a part, and top-k answers
the producer heads cannot prove.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from ingest.buffer import MINUTE_ROLLUP_SCHEMA, BufferView, LiveBuffer
from query.errors import InvalidQuery, QueryTimeout
from query.indexes import IndexConfig, PartIndexes
from query.sandbox import register_parquet
from query.timerange import ceil_to, floor_to
from query.topk import top_of
from storage.manifest import Manifest, ManifestState, Part
from storage.rollup import PRODUCER_ROLLUP_SCHEMA
from storage.schema import HOUR_NS, MINUTE_NS, STORED_SCHEMA

__all__ = ["Aggregate", "Engine", "EngineConfig", "Snapshot", "TopEntry"]


@dataclass(frozen=True)
class EngineConfig:
    threads: int = 2
    memory_limit: str = "1GB"
    timeout_s: float = 30.0
    max_k: int = 10_000
    indexes: IndexConfig = field(default_factory=IndexConfig)


@dataclass(frozen=True)
class Aggregate:
    count: int
    sum: int


@dataclass(frozen=True)
class TopEntry:
    producer_id: str
    count: int


@dataclass(frozen=True)
class Snapshot:
    """What one query sees: committed parts plus uncommitted buffer rows, disjoint."""

    root: Path
    state: ManifestState
    buffer: BufferView

    def files(self, kind: str, start: int, end: int, parts: Sequence[Part] | None = None) -> list[str]:
        """Files of ``kind`` of the parts overlapping ``[start, end)`` (of ``parts`` when given)."""
        chosen = self.state.parts_between(start, end) if parts is None else parts
        return [p.path(self.root, kind) for p in chosen if p.hour < end and p.hour + HOUR_NS > start]

    def all_files(self, kind: str) -> list[str]:
        return [p.path(self.root, kind) for p in self.state.parts]


def _parquet(paths: Sequence[str]) -> str:
    """A ``read_parquet`` of our own files. Hive partitioning is off: the ``hour=`` folder
    name would otherwise shadow the ``hour`` column of the producer rollup as a string."""
    files = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
    return f"read_parquet([{files}], hive_partitioning = false)"


def _shard_clause(shards: Sequence[int] | None) -> str:
    if shards is None:
        return ""
    if not shards:
        return " AND false"
    return f" AND shard IN ({', '.join(str(int(s)) for s in sorted(shards))})"


class Engine:
    """Exact count / sum / top-k over one node's data (all shards, or a given subset)."""

    def __init__(self, root: Path, manifest: Manifest, buffer: LiveBuffer, config: EngineConfig | None = None) -> None:
        self.root = root
        self.manifest = manifest
        self.buffer = buffer
        self.config = config or EngineConfig()
        self._db = duckdb.connect(
            config={
                "threads": self.config.threads,
                "memory_limit": self.config.memory_limit,
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
            }
        )
        # Parts are immutable and uniquely named, so their footers can be cached for good.
        self._db.execute("SET parquet_metadata_cache = true")
        self.indexes = PartIndexes(root, manifest, self.config.indexes)
        self.duckdb_answers = 0  # answers that needed DuckDB (the rest came from indexes alone)

    def close(self) -> None:
        self.indexes.close()
        self._db.close()

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        with contextlib.ExitStack() as stack:
            view, state = self.buffer.view(pin=lambda: stack.enter_context(self.manifest.pin()))
            self.indexes.notice(state)  # type: ignore[arg-type]
            yield Snapshot(self.root, state, view)  # type: ignore[arg-type]

    def _run(
        self, sql: str, params: dict[str, object], tables: dict[str, pa.Table] | None = None
    ) -> list[tuple[object, ...]]:
        cur = self._db.cursor()
        for name, table in (tables or {}).items():
            cur.register(name, table)
        timer = threading.Timer(self.config.timeout_s, cur.interrupt)
        timer.start()
        try:
            return cur.sql(sql, params=params).fetchall()
        except duckdb.InterruptException as e:
            raise QueryTimeout(f"query exceeded {self.config.timeout_s}s") from e
        finally:
            timer.cancel()
            cur.close()

    # -- count and sum ---------------------------------------------------------------------------

    def aggregate(self, category: str, start: int, end: int, shards: Sequence[int] | None = None) -> Aggregate:
        """Exact count and sum of ``value`` for ``category`` over ``[start, end)``."""
        out = self._aggregate(category, start, end, shards, duckdb_ok=True)
        assert out is not None
        return out

    def aggregate_from_indexes(
        self, category: str, start: int, end: int, shards: Sequence[int] | None = None
    ) -> Aggregate | None:
        """``aggregate`` when the live buffer and the parts' in-memory indexes answer it alone,
        else None (some part needs DuckDB): the exact answer in a fraction of a millisecond or
        nothing, for callers that must not block long (``web/peerreads.py``)."""
        return self._aggregate(category, start, end, shards, duckdb_ok=False)

    def _aggregate(
        self, category: str, start: int, end: int, shards: Sequence[int] | None, duckdb_ok: bool
    ) -> Aggregate | None:
        if start >= end:
            return Aggregate(0, 0)
        with self.snapshot() as snap:
            count, total = snap.buffer.aggregate(category, start, end, shards)
            c, s, slow = self.indexes.aggregate(snap.state, category, start, end, shards)
            count, total = count + c, total + s
            sql = self.aggregate_sql(snap, start, end, shards, slow) if slow else None
            if sql is not None:
                if not duckdb_ok:
                    return None
                self.duckdb_answers += 1
                ((c, s),) = self._run(sql, {"cat": category})  # type: ignore[assignment]
                count, total = count + int(c), total + int(s)
        return Aggregate(count, total)

    def aggregate_sql(
        self, snap: Snapshot, start: int, end: int, shards: Sequence[int] | None, parts: Sequence[Part] | None = None
    ) -> str | None:
        """One statement answering the committed parts' share (of ``parts`` when given; None
        when no part overlaps)."""
        sc = _shard_clause(shards)
        m1, m2 = ceil_to(start, MINUTE_NS), floor_to(end, MINUTE_NS)
        pieces = []
        if m1 < m2:
            where = f"category = $cat AND minute >= {m1} AND minute < {m2}{sc}"
            files = snap.files("rollup_minute", m1, m2, parts)
            if files:
                pieces.append(
                    f"SELECT sum(count) AS c, sum(sum)::DECIMAL(38,0) AS s FROM {_parquet(files)} WHERE {where}"
                )
            edges = [(start, m1), (m2, end)]
        else:
            edges = [(start, end)]
        edges = [(a, b) for a, b in edges if a < b]
        if edges:
            cond = " OR ".join(f"(timestamp >= {a} AND timestamp < {b})" for a, b in edges)
            where = f"category = $cat AND ({cond}){sc}"
            files = sorted({f for a, b in edges for f in snap.files("events", a, b, parts)})
            if files:
                pieces.append(
                    f"SELECT count(*) AS c, sum(value)::DECIMAL(38,0) AS s FROM {_parquet(files)} WHERE {where}"
                )
        if not pieces:
            return None
        union = " UNION ALL ".join(pieces)
        return f"SELECT coalesce(sum(c), 0)::BIGINT, coalesce(sum(s), 0)::DECIMAL(38,0) FROM ({union})"

    # -- top-k -----------------------------------------------------------------------------------

    def topk(self, category: str, start: int, end: int, k: int, shards: Sequence[int] | None = None) -> list[TopEntry]:
        """The ``k`` producers with the most events, by count desc then producer_id asc."""
        out = self._topk(category, start, end, k, shards, duckdb_ok=True)
        assert out is not None
        return out

    def topk_from_indexes(
        self, category: str, start: int, end: int, k: int, shards: Sequence[int] | None = None
    ) -> list[TopEntry] | None:
        """``topk`` when the buffer and the parts' heads and rollups prove it (milliseconds at
        most), else None: the exact answer or nothing, like ``aggregate_from_indexes``."""
        return self._topk(category, start, end, k, shards, duckdb_ok=False)

    def _topk(
        self, category: str, start: int, end: int, k: int, shards: Sequence[int] | None, duckdb_ok: bool
    ) -> list[TopEntry] | None:
        if k <= 0 or k > self.config.max_k:
            raise InvalidQuery(f"k must be between 1 and {self.config.max_k}")
        if start >= end:
            return []
        with self.snapshot() as snap:
            fast = self.indexes.topk(snap.state, snap.buffer, category, start, end, k, shards)
            if fast is not None:
                return [TopEntry(p, c) for p, c in fast]
            if not duckdb_ok:
                return None
            buffered = snap.buffer.producer_counts(category, start, end, shards)
            sql = self.topk_sql(snap, start, end, shards)
            if sql is None:
                return [TopEntry(p, c) for p, c in top_of(buffered, k)]
            self.duckdb_answers += 1
            rows = self._run(sql, {"cat": category, "k": k}, {"buf_top": buffered})
        return [TopEntry(str(p), int(c)) for p, c in rows]  # type: ignore[call-overload]

    def topk_sql(self, snap: Snapshot, start: int, end: int, shards: Sequence[int] | None) -> str | None:
        """One statement over the committed parts plus ``buf_top(producer_id, count)``, the
        buffer's counts (None when no part overlaps)."""
        sc = _shard_clause(shards)
        h1, h2 = ceil_to(start, HOUR_NS), floor_to(end, HOUR_NS)
        pieces = []
        if h1 < h2:
            files = snap.files("rollup_producer", h1, h2)
            if files:
                pieces.append(
                    f"SELECT producer_id, count AS c FROM {_parquet(files)} "
                    f"WHERE category = $cat AND hour >= {h1} AND hour < {h2}{sc}"
                )
            edges = [(start, h1), (h2, end)]
        else:
            edges = [(start, end)]
        edges = [(a, b) for a, b in edges if a < b]
        if edges:
            cond = " OR ".join(f"(timestamp >= {a} AND timestamp < {b})" for a, b in edges)
            files = sorted({f for a, b in edges for f in snap.files("events", a, b)})
            if files:
                pieces.append(
                    f"SELECT producer_id, 1 AS c FROM {_parquet(files)} WHERE category = $cat AND ({cond}){sc}"
                )
        if not pieces:
            return None
        pieces.append("SELECT producer_id, count AS c FROM buf_top")
        union = " UNION ALL ".join(pieces)
        return (
            f"SELECT producer_id, sum(c)::BIGINT AS n FROM ({union}) GROUP BY producer_id "
            "ORDER BY n DESC, producer_id ASC LIMIT $k"
        )

    # -- raw rows (SQL views and export) ---------------------------------------------------------

    def define_views(
        self, snap: Snapshot, shards: Sequence[int] | None = None
    ) -> Callable[[duckdb.DuckDBPyConnection], None]:
        """A function that creates the SQL views ``events``, ``rollup_minute`` and
        ``rollup_producer_hour`` over ``snap`` on a sandboxed connection: Parquet parts are
        handed over as pyarrow datasets and the buffer as Arrow tables, so DuckDB itself never
        gets a file path (see ``query/sandbox.py`` for why). With ``shards``, every view holds
        the rows of those shards only (a node's part of a cluster-wide query)."""
        only = "" if shards is None else " WHERE true" + _shard_clause(shards)

        def define(con: duckdb.DuckDBPyConnection) -> None:
            sources = {
                "events": ("events", STORED_SCHEMA, snap.buffer.rows),
                "rollup_minute": ("rollup_minute", MINUTE_ROLLUP_SCHEMA, snap.buffer.rollup),
                "rollup_producer_hour": ("rollup_producer", PRODUCER_ROLLUP_SCHEMA, None),
            }
            for name, (kind, schema, buffered) in sources.items():
                register_parquet(con, f"{name}_parts", snap.all_files(kind), schema)
                sql = f"CREATE VIEW {name} AS SELECT * FROM {name}_parts{only}"
                if buffered is not None:
                    con.register(f"{name}_buffer", buffered)
                    sql += f" UNION ALL BY NAME SELECT * FROM {name}_buffer{only}"
                con.execute(sql)

        return define

    def export(self, category: str | None, start: int, end: int, batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
        """Stream the raw rows of ``[start, end)`` (one category or all), in batches."""
        with self.snapshot() as snap:
            files = snap.files("events", start, end)
            cond = f"timestamp >= {start} AND timestamp < {end}" + (" AND category = $cat" if category else "")
            cols = "timestamp, category, value, producer_id"
            pieces = [f"SELECT {cols} FROM {_parquet(files)} WHERE {cond}"] if files else []
            pieces.append(f"SELECT {cols} FROM buf_rows WHERE {cond}")
            cur = self._db.cursor()
            try:
                cur.register("buf_rows", snap.buffer.rows)
                params = {"cat": category} if category else None
                reader = cur.sql(" UNION ALL ".join(pieces), params=params).to_arrow_reader(batch_rows)
                yield from reader
            finally:
                cur.close()

    def slice_rows(self, slices: Sequence[tuple[int, int, Sequence[int]]]) -> pa.Table:
        """The stored rows (``STORED_SCHEMA``) of the given (shard, hour, batch ids) slices, from
        parts and live buffer alike: what a replica ships to another (cluster repair)."""
        wanted = pa.table(
            {
                "w_shard": pa.array([s for s, _, ids in slices for _ in ids], pa.int64()),
                "w_hour": pa.array([h for _, h, ids in slices for _ in ids], pa.int64()),
                "w_batch": pa.array([b for _, _, ids in slices for b in ids], pa.int64()),
            }
        )
        with self.snapshot() as snap:
            files = sorted({f for _, h, _ in slices for f in snap.files("events", h, h + HOUR_NS)})
            src = [f"SELECT * FROM {_parquet(files)}"] if files else []
            src.append("SELECT * FROM buf_rows")
            cur = self._db.cursor()
            try:
                cur.register("buf_rows", snap.buffer.rows)
                cur.register("wanted", wanted)
                out = cur.sql(
                    f"SELECT r.* FROM ({' UNION ALL BY NAME '.join(src)}) r SEMI JOIN wanted w "
                    f"ON r.shard = w.w_shard AND r.batch_id = w.w_batch "
                    f"AND r.timestamp - r.timestamp % {HOUR_NS} = w.w_hour"
                ).to_arrow_table()
            finally:
                cur.close()
        return out.select(STORED_SCHEMA.names).cast(STORED_SCHEMA)

    def took_ms(self, t0: float) -> float:
        return round((time.perf_counter() - t0) * 1000, 3)
