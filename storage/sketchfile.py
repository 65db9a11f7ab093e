"""Sketch files: ``sketch-<part>.parquet`` beside each part, for approximate answers (issue 7).

A sketch file holds ``storage.sketch.SKETCH_SCHEMA`` rows, one per (category, shard, hour) of
its part, built from exactly the part's rows when the part is written and merged (never rebuilt
from raw rows) when parts are compacted. Its size is bounded per row by
``SketchConfig.max_bytes()`` whatever the part's row count. ``SketchExtra`` plugs it into
``PartitionStore`` as a ``PartExtra`` of kind ``sketch``; a part written while sketches were off
has no such file, and readers must then sketch that part's raw rows themselves.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from storage.errors import StorageError
from storage.sketch import SKETCH_SCHEMA, SketchConfig, build_sketches, merge_sketch_tables

__all__ = ["SKETCH_KIND", "SketchExtra", "read_sketch_file", "write_sketch_file"]

SKETCH_KIND = "sketch"

# Dictionaries and statistics only for the keys (readers filter on them): the sketch blobs never
# repeat, and min/max statistics of a blob column would copy whole sketches into the footer.
_KEYS = ["category", "shard", "hour"]
_WRITE_OPTIONS: dict[str, Any] = {"use_dictionary": _KEYS, "write_statistics": _KEYS}

# What the sketches are built from: the columns build_sketches reads.
_SKETCHED_COLUMNS = "timestamp, category, value, producer_id, shard"


def write_sketch_file(table: pa.Table, path: str, compression: str = "zstd") -> None:
    """Write ``table`` (SKETCH_SCHEMA) as Parquet at ``path``; durable (fsynced) when it returns.
    The caller renames it into place."""
    table = table.select(SKETCH_SCHEMA.names).cast(SKETCH_SCHEMA)
    with open(path, "wb") as f:
        pq.write_table(table, f, compression=compression, **_WRITE_OPTIONS)
        f.flush()
        os.fsync(f.fileno())


def read_sketch_file(path: str) -> pa.Table:
    """The SKETCH_SCHEMA rows of a sketch file. Raises ``StorageError`` if it cannot be read."""
    try:
        return pq.read_table(path).select(SKETCH_SCHEMA.names).cast(SKETCH_SCHEMA)
    except (OSError, pa.ArrowException, KeyError, ValueError) as e:
        raise StorageError(f"sketch file {path} cannot be read: {e}") from e


class SketchExtra:
    """``PartExtra`` of kind ``sketch``: HLL, frequent-items and KLL sketches of a part's rows
    per (category, shard, hour), sized by ``config``."""

    kind = SKETCH_KIND

    def __init__(self, config: SketchConfig | None = None, compression: str = "zstd") -> None:
        self.config = config or SketchConfig()
        self.compression = compression

    def build(self, con: duckdb.DuckDBPyConnection, rows_relation: str, path: str) -> None:
        """Sketch the rows of ``rows_relation`` (STORED_SCHEMA columns) into ``path``, fsynced."""
        rows = con.sql(f"SELECT {_SKETCHED_COLUMNS} FROM {rows_relation}").to_arrow_table()
        write_sketch_file(build_sketches(rows, self.config), path, self.compression)

    def build_table(self, rows: pa.Table, path: str, producer_counts: pa.Table | None = None) -> None:
        """``build`` from the rows themselves (no DuckDB round trip) and, when the caller has it,
        their producer rollup (``storage.rollup.producer_rollup(rows)``), which saves counting
        the producers again: about 60 + 80 ns per event less than ``build`` on W20."""
        write_sketch_file(build_sketches(rows, self.config, producer_counts), path, self.compression)

    def merge(self, con: duckdb.DuckDBPyConnection, paths: Sequence[str], path: str) -> None:
        """Merge the sketch files ``paths`` into ``path``, fsynced: rows of one key are merged
        sketch by sketch, so the result summarises exactly the union of the parts' rows."""
        tables = [read_sketch_file(p) for p in paths]
        write_sketch_file(merge_sketch_tables(tables, self.config), path, self.compression)
