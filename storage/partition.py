"""Parquet partitions: one Hive-style folder per hour, immutable parts inside it.

A part is the raw rows of one hour sorted by (category, timestamp) plus the minute and producer
rollups built from exactly those rows. Files are written under a temporary name, fsynced and
renamed, so a part that exists is complete; it becomes visible only when the manifest names it.
The folders are plain Parquet that DuckDB, Polars or Spark read as they are.

Parts are sorted, aggregated and encoded with Arrow and numpy, not DuckDB: a DuckDB ``COPY``
over a registered Arrow table converts every string again for each of the three files, and was
the cap of sustained ingest. The encodings are chosen per column (delta-packed timestamps,
delta-length producer ids, dictionaries for the rest, delta lengths in the producer rollup):
about 8.5 bytes per event for the raw rows and 2.3 for both rollups on workload W20.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import duckdb
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.errors import StorageError
from storage.eventmerge import merge_events
from storage.manifest import Manifest, Part, fsync_dir
from storage.ordering import EVENTS_SORT_KEY, EVENTS_SORTED_BY, time_category_order
from storage.rollup import (
    PRODUCER_ROLLUP_SCHEMA,
    minute_rollup,
    producer_rollup,
)
from storage.rollupmerge import merge_minute_rollups, merge_producer_rollups
from storage.schema import STORED_SCHEMA

__all__ = [
    "PartExtra",
    "PartWriter",
    "PartitionConfig",
    "PartitionStore",
    "hour_folder",
    "sort_rows",
    "storage_cursor",
    "storage_db",
]


def hour_folder(hour_ns: int) -> str:
    """``hour=YYYY-MM-DDTHH`` for the hour starting at ``hour_ns``."""
    dt = datetime.fromtimestamp(hour_ns // 1_000_000_000, tz=UTC)
    return f"hour={dt:%Y-%m-%dT%H}"


@dataclass(frozen=True)
class PartitionConfig:
    compression: str = "zstd"
    compression_level: int = 1  # level 3 saves under 1% on events and costs a fifth more time
    # Small row groups let a query read a ragged edge without decoding much more than it needs,
    # big ones compress better. 32k rows save 0.29 bytes per event on W20 (bench/diskbytes.py),
    # but through HTTP on the full bench the server's own time doubled (count 1.5-2.6 vs 0.5-0.9
    # ms, top-10 1 h 10.5 vs 5.5 ms: edges decode 4x the rows, and a day of 32k groups overflows
    # the decoded-group cache), missing the latency targets; 8k meets them at 11.98 bytes/event.
    row_group_rows: int = 8_192
    rollup_row_group_rows: int = 131_072  # rollups are read whole: big groups compress better
    # A merge holds about this many rows in memory at once, whatever the parts' size (eventmerge.py).
    merge_window_rows: int = 1 << 20
    # Of the node's one storage database (``storage_db``), which persists and merges share: the
    # 256 MB each of them had when each had a database of its own.
    duckdb_memory_limit: str = "512MB"


class PartExtra(Protocol):
    """Something more to build beside each part (e.g. sketches), from the part's rows or from
    the files of the parts a merge takes.

    An extra that offers ``writer(path)`` (a ``PartWriter``) is built from rows whenever a part
    is made: a new part's rows when a store with the extra writes it, the merged rows as a merge
    writes them, and the part's rows when ``complete`` gives a part the files it lacks (written
    by a store without the extra: a node's persists build no sketches, ``cluster/node.py``). Any
    other extra is built by ``build`` from a new part's rows, and for a merged part merged from
    the parts' files (``merge``) when every part has one, else built once over all the merged
    rows (a part written before the extra was enabled). ``build`` and ``merge`` leave ``path``
    fsynced."""

    kind: str

    def build(self, con: duckdb.DuckDBPyConnection, rows_relation: str, path: str) -> None: ...

    def merge(self, con: duckdb.DuckDBPyConnection, paths: Sequence[str], path: str) -> None: ...


class PartWriter(Protocol):
    """An extra's file built from rows handed in batches: STORED_SCHEMA rows in (category,
    timestamp) order, as a merge writes them; ``finish`` leaves the file fsynced."""

    def add(self, rows: pa.Table) -> None: ...

    def finish(self) -> None: ...


def _writer(extra: PartExtra, path: str) -> PartWriter | None:
    """``extra``'s writer of ``path``, or None when it offers none (see ``PartExtra``)."""
    make = getattr(extra, "writer", None)
    return None if make is None else make(path)


def sort_rows(rows: pa.Table, by_category: Ints | None = None) -> list[tuple[int, pa.Table]]:
    """STORED_SCHEMA rows as ``(hour_ns, rows of that hour sorted by (category, timestamp))``;
    ``by_category`` is the rows' order by (category, timestamp) when the caller knows it."""
    order, hours = time_category_order(rows, by_category)
    if not hours:
        return []
    ordered = rows.take(pa.array(order)).combine_chunks()
    return [(hour, ordered.slice(first, n)) for hour, first, n in hours]


Ints = npt.NDArray[Any]

# Producer ids as delta lengths, not a dictionary: with ~5k distinct ids per 8k-row group the
# dictionary barely repeats, and DELTA_LENGTH_BYTE_ARRAY is smaller (8.54 vs 8.83 bytes per
# event on W20), writes faster and decodes a fifth faster for top-k edges.
_EVENTS_OPTIONS: dict[str, Any] = {
    "use_dictionary": ["category", "shard", "batch_id", "value"],
    "column_encoding": {"timestamp": "DELTA_BINARY_PACKED", "producer_id": "DELTA_LENGTH_BYTE_ARRAY"},
}
# Producer rollup rows are mostly one event (count 1, sum = that value), so counts and sums
# repeat and dictionaries suit them (-0.1 bytes per event on W20 against delta-packed counts and
# plain sums); ids in first-seen order share no prefixes, so delta lengths beat delta strings.
_PRODUCER_OPTIONS: dict[str, Any] = {
    "use_dictionary": ["category", "shard", "hour", "count", "sum"],
    "column_encoding": {"producer_id": "DELTA_LENGTH_BYTE_ARRAY"},
}
# Sums (DECIMAL(38,0), 16 bytes) plain: a dictionary of them barely repeats (-2 % on the minute
# rollup on W20). BYTE_STREAM_SPLIT would save more but DuckDB reads it only for 4/8-byte types.
_MINUTE_OPTIONS: dict[str, Any] = {"use_dictionary": ["category", "shard", "minute", "count"]}


_CURSORS = threading.Lock()  # see storage_cursor


def storage_db(config: PartitionConfig | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB database for writing and merging parts. A node opens one and shares
    it (``PartitionStore``'s ``db``): its stores and its cluster index work through cursors of it,
    each cursor a connection of its own, so they still run side by side. Each database costs
    ~4 MiB (its catalog, buffer manager and allocator caches): one instead of three took 8 MiB off
    a node's RSS, idle (182 -> 174 MiB) and after loading W20 (issue 8). ``memory_limit`` bounds
    what they hold together."""
    config = config or PartitionConfig()
    return duckdb.connect(
        config={"threads": 2, "preserve_insertion_order": False, "memory_limit": config.duckdb_memory_limit}
    )


def storage_cursor(db: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A connection of its own to ``db``, for one thread. A DuckDB connection object is not
    thread-safe and a node's stores and cluster index share one (``storage_db``), so every
    cursor of it is made here, one at a time."""
    with _CURSORS:
        return db.cursor()


class PartitionStore:
    """Writes and merges parts under ``DATA/partitions``; the manifest decides what is visible."""

    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        config: PartitionConfig | None = None,
        extras: Sequence[PartExtra] = (),
        db: duckdb.DuckDBPyConnection | None = None,
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.config = config or PartitionConfig()
        self.extras = list(extras)
        # Cursors are made from ``db`` (a node's stores share one database, see ``storage_db``),
        # or from a database of the store's own, closed with it.
        self._owns_db = db is None
        self._con = storage_db(self.config) if db is None else db
        self._lock = threading.Lock()  # one merge at a time
        (root / "partitions").mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        if self._owns_db:
            self._con.close()

    def _paths(self, hour: int, pid: int) -> dict[str, str]:
        folder = f"partitions/{hour_folder(hour)}"
        kinds = ["events", "rollup_minute", "rollup_producer", *(e.kind for e in self.extras)]
        return {k: f"{folder}/{k}-{pid:08d}.parquet" for k in kinds}

    def _write_file(self, table: pa.Table, rel: str, options: dict[str, Any], row_group_rows: int = 0) -> None:
        tmp = str(self.root / rel) + ".tmp"
        c = self.config
        for attempt in range(3):
            # The hour's folder is made just before its part's first file, and retention removes
            # an expired hour's empty folder: a persist of that hour's late rows can lose the race
            # in between. Made again, it stays once this file is in it.
            (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
            try:
                pq.write_table(
                    table,
                    tmp,
                    compression=c.compression,
                    compression_level=c.compression_level,
                    row_group_size=row_group_rows or c.rollup_row_group_rows,
                    **options,
                )
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.root / rel)

    def _write_events(self, rows: pa.Table, rel: str) -> None:
        meta = {**(rows.schema.metadata or {}), EVENTS_SORT_KEY: EVENTS_SORTED_BY}
        self._write_file(rows.replace_schema_metadata(meta), rel, _EVENTS_OPTIONS, self.config.row_group_rows)

    def _merged_file(
        self, rel: str, schema: pa.Schema, options: dict[str, Any], row_group_rows: int
    ) -> contextlib.AbstractContextManager[Callable[[pa.Table], None]]:
        """A writer of ``rel`` taking tables in order and writing them in whole row groups of
        ``row_group_rows`` (the last may be shorter); fsynced and renamed into place on a clean
        exit, so a merged file exists only complete."""
        tmp = str(self.root / rel) + ".tmp"
        c = self.config
        flush_rows = max(row_group_rows, 16 * c.row_group_rows)  # written a few row groups at a time

        @contextlib.contextmanager
        def opened() -> Iterator[Callable[[pa.Table], None]]:
            pending: list[pa.Table] = []
            with pq.ParquetWriter(
                tmp, schema, compression=c.compression, compression_level=c.compression_level, **options
            ) as writer:

                def flush(final: bool) -> None:
                    rows = pa.concat_tables(pending)
                    n = rows.num_rows if final else rows.num_rows - rows.num_rows % row_group_rows
                    if n:
                        writer.write_table(rows.slice(0, n), row_group_size=row_group_rows)
                    pending[:] = [rows.slice(n)] if n < rows.num_rows else []

                def take(rows: pa.Table) -> None:
                    pending.append(rows)
                    if sum(t.num_rows for t in pending) >= flush_rows:
                        flush(final=False)

                yield take
                if pending:
                    flush(final=True)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.root / rel)

        return opened()

    def _merge_events(
        self, parts: Sequence[Part], categories: list[str], rel: str, writers: Sequence[PartWriter]
    ) -> None:
        """The parts' events merged into one file, sorted by (category, timestamp), in bounded
        memory (``storage/eventmerge.py``); written in whole row groups, and handed to
        ``writers`` as they are."""
        c = self.config
        schema = STORED_SCHEMA.with_metadata({**(STORED_SCHEMA.metadata or {}), EVENTS_SORT_KEY: EVENTS_SORTED_BY})
        with self._merged_file(rel, schema, _EVENTS_OPTIONS, c.row_group_rows) as write:

            def take(rows: pa.Table) -> None:
                write(rows)
                for writer in writers:
                    writer.add(rows)

            written = merge_events([p.path(self.root, "events") for p in parts], categories, take, c.merge_window_rows)
        expected = sum(p.rows for p in parts)
        if written != expected:
            raise StorageError(f"merging parts {[p.id for p in parts]} gave {written} rows, not {expected}")

    def _merge_producers(self, parts: Sequence[Part], categories: list[str], rel: str) -> None:
        """The parts' producer rollups summed into one, a category at a time
        (``storage/rollupmerge.py``)."""
        paths = [p.path(self.root, "rollup_producer") for p in parts]
        group_rows = self.config.rollup_row_group_rows
        with self._merged_file(rel, PRODUCER_ROLLUP_SCHEMA, _PRODUCER_OPTIONS, group_rows) as take:
            counted = merge_producer_rollups(paths, categories, take)
        expected = sum(p.rows for p in parts)
        if counted != expected:
            raise StorageError(f"merging parts {[p.id for p in parts]} counted {counted} events, not {expected}")

    def write(self, rows: pa.Table, by_category: Ints | None = None) -> list[Part]:
        """Write ``rows`` (STORED_SCHEMA, any hours) as one new part per hour they touch;
        ``by_category``, when given, is the positions of ``rows`` sorted by (category,
        timestamp), which saves the sort.

        Returns the parts once every file is durable; the caller commits them to the manifest.
        Several threads may write at once (the persister writes a generation's pieces side by
        side): each part has its own id and files, and its own DuckDB cursor.
        """
        if rows.num_rows == 0:
            return []
        rows = rows.select(STORED_SCHEMA.names).cast(STORED_SCHEMA)
        return [self._write_part(hour, part_rows) for hour, part_rows in sort_rows(rows, by_category)]

    def _write_part(self, hour: int, rows: pa.Table) -> Part:
        """One part from the rows of one hour, already sorted by (category, timestamp)."""
        pid = self.manifest.allocate_part_id()
        files = self._paths(hour, pid)
        self._write_events(rows, files["events"])
        self._write_file(minute_rollup(rows), files["rollup_minute"], _MINUTE_OPTIONS)
        self._write_file(producer_rollup(rows), files["rollup_producer"], _PRODUCER_OPTIONS)
        if self.extras:
            cur = storage_cursor(self._con)
            try:
                cur.register("part_rows", rows)
                for extra in self.extras:
                    tmp = str(self.root / files[extra.kind]) + ".tmp"
                    writer = _writer(extra, tmp)
                    if writer is not None:
                        writer.add(rows)
                        writer.finish()
                    else:
                        extra.build(cur, "part_rows", tmp)
                    os.replace(tmp, self.root / files[extra.kind])
            finally:
                cur.close()
        fsync_dir((self.root / files["events"]).parent)
        lo_hi = pc.min_max(rows.column("timestamp"))
        return Part(pid, hour, rows.num_rows, int(lo_hi["min"].as_py()), int(lo_hi["max"].as_py()), files)

    def merge(self, parts: Sequence[Part]) -> Part:
        """Merge parts of one hour into one new part (rollups summed, never rebuilt from raw rows)."""
        hour = parts[0].hour
        assert all(p.hour == hour for p in parts), "merge takes parts of one hour"
        pid = self.manifest.allocate_part_id()
        files = self._paths(hour, pid)

        with self._lock:
            cur = storage_cursor(self._con)
            try:
                minutes = merge_minute_rollups([p.path(self.root, "rollup_minute") for p in parts])
                self._write_file(minutes, files["rollup_minute"], _MINUTE_OPTIONS)
                # The minute rollups name every category of the parts' rows.
                categories = sorted(pc.unique(minutes["category"]).to_pylist())
                del minutes
                tmps = {e.kind: str(self.root / files[e.kind]) + ".tmp" for e in self.extras}
                writers = {e.kind: w for e in self.extras if (w := _writer(e, tmps[e.kind])) is not None}
                self._merge_events(parts, categories, files["events"], list(writers.values()))
                self._merge_producers(parts, categories, files["rollup_producer"])
                for extra in self.extras:
                    if extra.kind in writers:
                        writers[extra.kind].finish()
                    else:
                        self._extra_file(cur, extra, parts, tmps[extra.kind])
                    os.replace(tmps[extra.kind], self.root / files[extra.kind])
            finally:
                cur.close()
        fsync_dir((self.root / files["events"]).parent)
        return Part(
            pid,
            hour,
            sum(p.rows for p in parts),
            min(p.min_ts for p in parts),
            max(p.max_ts for p in parts),
            files,
        )

    def _extra_file(self, cur: duckdb.DuckDBPyConnection, extra: PartExtra, parts: Sequence[Part], tmp: str) -> None:
        """``extra``'s file for the rows of ``parts`` at ``tmp``, for an extra without a
        ``writer``: their files merged, or built from all their rows if one has none."""
        if all(extra.kind in p.files for p in parts):
            extra.merge(cur, [p.path(self.root, extra.kind) for p in parts], tmp)
            return
        events = ", ".join(f"'{p.path(self.root, 'events')}'" for p in parts)
        cur.execute(
            "CREATE OR REPLACE TEMP VIEW part_rows AS "
            f"SELECT * FROM read_parquet([{events}], hive_partitioning = false)"
        )
        extra.build(cur, "part_rows", tmp)

    def missing(self, part: Part) -> list[str]:
        """The kinds of this store's extras that ``part`` has no file of."""
        return [e.kind for e in self.extras if e.kind not in part.files]

    def complete(self, part: Part) -> Part:
        """``part`` with a file of every extra of this store it lacks, built from its rows (as a
        merge builds them, see ``PartExtra``); the caller commits it in place of ``part``. The
        part's other files are its own, unchanged: only its ``files`` grow."""
        files = dict(part.files)
        paths = self._paths(part.hour, part.id)
        with self._lock:
            cur = storage_cursor(self._con)
            try:
                for extra in self.extras:
                    if extra.kind in files:
                        continue
                    rel = paths[extra.kind]
                    tmp = str(self.root / rel) + ".tmp"
                    writer = _writer(extra, tmp)
                    if writer is not None:
                        self._write_from_rows(writer, part)
                    else:
                        self._extra_file(cur, extra, [part], tmp)
                    os.replace(tmp, self.root / rel)
                    files[extra.kind] = rel
            finally:
                cur.close()
        fsync_dir((self.root / files["events"]).parent)
        return replace(part, files=files)

    def _write_from_rows(self, writer: PartWriter, part: Part) -> None:
        """Hand ``writer`` the part's rows a row group at a time, and finish it."""
        try:
            events = pq.ParquetFile(part.path(self.root, "events"))
            for group in range(events.metadata.num_row_groups):
                writer.add(events.read_row_group(group, columns=STORED_SCHEMA.names, use_threads=False))
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"events of part {part.id} cannot be read: {e}") from e
        writer.finish()

    def remove_tmp_files(self) -> None:
        for path in (self.root / "partitions").rglob("*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
