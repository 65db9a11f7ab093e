"""Parquet partitions: one Hive-style folder per hour, immutable parts inside it.

A part is the raw rows of one hour sorted by (category, shard, timestamp) plus the minute and
producer rollups built from exactly those rows. Files are written under a temporary name,
fsynced and renamed, so a part that exists is complete; it becomes visible only when the
manifest names it. The folders are plain Parquet that DuckDB, Polars or Spark read as they are.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import duckdb
import pyarrow as pa

from storage.manifest import Manifest, Part, fsync_dir
from storage.rollup import (
    MERGE_MINUTE_SQL,
    MERGE_PRODUCER_SQL,
    MINUTE_ROLLUP_SQL,
    PRODUCER_ROLLUP_SQL,
)
from storage.schema import HOUR_NS, STORED_SCHEMA

__all__ = ["PartExtra", "PartitionConfig", "PartitionStore", "hour_folder"]


def hour_folder(hour_ns: int) -> str:
    """``hour=YYYY-MM-DDTHH`` for the hour starting at ``hour_ns``."""
    dt = datetime.fromtimestamp(hour_ns // 1_000_000_000, tz=UTC)
    return f"hour={dt:%Y-%m-%dT%H}"


@dataclass(frozen=True)
class PartitionConfig:
    compression: str = "zstd"
    compression_level: int = 3
    row_group_rows: int = 122_880


class PartExtra(Protocol):
    """Something more to build beside each part (e.g. sketches): built from the part's rows,
    merged from parts' files on compaction, never rebuilt from raw rows. When some of the parts
    merged have no file of this kind (written before it was enabled), ``build`` runs once over
    the merged rows instead. ``build`` and ``merge`` leave ``path`` fsynced."""

    kind: str

    def build(self, con: duckdb.DuckDBPyConnection, rows_relation: str, path: str) -> None: ...

    def merge(self, con: duckdb.DuckDBPyConnection, paths: Sequence[str], path: str) -> None: ...


class PartitionStore:
    """Writes and merges parts under ``DATA/partitions``; the manifest decides what is visible."""

    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        config: PartitionConfig | None = None,
        extras: Sequence[PartExtra] = (),
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.config = config or PartitionConfig()
        self.extras = list(extras)
        self._con = duckdb.connect(config={"threads": 2, "preserve_insertion_order": False})
        self._lock = threading.Lock()
        (root / "partitions").mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        self._con.close()

    def _copy_opts(self) -> str:
        c = self.config
        return (
            f"(FORMAT parquet, COMPRESSION {c.compression}, COMPRESSION_LEVEL {c.compression_level}, "
            f"ROW_GROUP_SIZE {c.row_group_rows})"
        )

    def _paths(self, hour: int, pid: int) -> dict[str, str]:
        folder = f"partitions/{hour_folder(hour)}"
        kinds = ["events", "rollup_minute", "rollup_producer", *(e.kind for e in self.extras)]
        return {k: f"{folder}/{k}-{pid:08d}.parquet" for k in kinds}

    def _copy(self, cur: duckdb.DuckDBPyConnection, sql: str, rel: str) -> None:
        tmp = str(self.root / rel) + ".tmp"
        cur.execute(f"COPY ({sql}) TO '{tmp}' {self._copy_opts()}")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.root / rel)

    def write(self, rows: pa.Table) -> list[Part]:
        """Write ``rows`` (STORED_SCHEMA, any hours) as one new part per hour they touch.

        Returns the parts once every file is durable; the caller commits them to the manifest.
        """
        if rows.num_rows == 0:
            return []
        rows = rows.select(STORED_SCHEMA.names)
        parts = []
        with self._lock:
            cur = self._con.cursor()
            try:
                cur.register("incoming", rows)
                hours = cur.sql(
                    f"SELECT timestamp - timestamp % {HOUR_NS} AS h, count(*), min(timestamp), "
                    "max(timestamp) FROM incoming GROUP BY h ORDER BY h"
                ).fetchall()
                for hour, n, lo, hi in hours:
                    src = (
                        f"(SELECT * FROM incoming WHERE timestamp >= {hour} AND timestamp < {hour + HOUR_NS})"
                    )
                    parts.append(self._write_part(cur, int(hour), int(n), int(lo), int(hi), src))
            finally:
                cur.close()
        return parts

    def _write_part(
        self, cur: duckdb.DuckDBPyConnection, hour: int, n: int, lo: int, hi: int, src: str
    ) -> Part:
        pid = self.manifest.allocate_part_id()
        files = self._paths(hour, pid)
        (self.root / files["events"]).parent.mkdir(parents=True, exist_ok=True)
        cur.execute(f"CREATE OR REPLACE TEMP VIEW part_rows AS {src}")
        self._copy(cur, "SELECT * FROM part_rows ORDER BY category, shard, timestamp", files["events"])
        self._copy(cur, MINUTE_ROLLUP_SQL.format(src="part_rows"), files["rollup_minute"])
        self._copy(cur, PRODUCER_ROLLUP_SQL.format(src="part_rows"), files["rollup_producer"])
        for extra in self.extras:
            tmp = str(self.root / files[extra.kind]) + ".tmp"
            extra.build(cur, "part_rows", tmp)
            os.replace(tmp, self.root / files[extra.kind])
        fsync_dir((self.root / files["events"]).parent)
        return Part(pid, hour, n, lo, hi, files)

    def merge(self, parts: Sequence[Part]) -> Part:
        """Merge parts of one hour into one new part (rollups summed, never rebuilt from raw rows)."""
        hour = parts[0].hour
        assert all(p.hour == hour for p in parts), "merge takes parts of one hour"
        pid = self.manifest.allocate_part_id()
        files = self._paths(hour, pid)

        def srcs(kind: str) -> str:
            return (
                "read_parquet(["
                + ", ".join(f"'{p.path(self.root, kind)}'" for p in parts)
                + "], hive_partitioning = false)"
            )

        with self._lock:
            cur = self._con.cursor()
            try:
                self._copy(
                    cur,
                    f"SELECT * FROM {srcs('events')} ORDER BY category, shard, timestamp",
                    files["events"],
                )
                self._copy(cur, MERGE_MINUTE_SQL.format(src=srcs("rollup_minute")), files["rollup_minute"])
                self._copy(
                    cur, MERGE_PRODUCER_SQL.format(src=srcs("rollup_producer")), files["rollup_producer"]
                )
                for extra in self.extras:
                    tmp = str(self.root / files[extra.kind]) + ".tmp"
                    if all(extra.kind in p.files for p in parts):
                        extra.merge(cur, [p.path(self.root, extra.kind) for p in parts], tmp)
                    else:
                        # A part written before this extra was enabled has no file of it: build
                        # the merged part's once from its rows, so the hour has one from now on.
                        cur.execute(f"CREATE OR REPLACE TEMP VIEW part_rows AS SELECT * FROM {srcs('events')}")
                        extra.build(cur, "part_rows", tmp)
                    os.replace(tmp, self.root / files[extra.kind])
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

    def remove_tmp_files(self) -> None:
        for path in (self.root / "partitions").rglob("*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
