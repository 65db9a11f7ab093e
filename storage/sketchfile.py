"""Sketch files: ``sketch_v2-<part>.parquet`` beside each part, for approximate answers (issue 7).

A sketch file holds ``storage.sketch.SKETCH_SCHEMA`` rows, one per (category, shard, hour) of
its part, built from exactly the part's rows when the part is written and merged (never rebuilt
from raw rows) when parts are compacted. Its size is bounded per row by
``SketchConfig.max_bytes()`` whatever the part's row count. ``SketchExtra`` plugs it into
``PartitionStore`` as a ``PartExtra`` of kind ``sketch``; a part written while sketches were off
has no such file, and readers must then sketch that part's raw rows themselves.

The kind is versioned: ``sketch_v2`` files hold CPC distinct sketches and keep small groups'
values instead of a KLL (issue 8). A part written by an older node names a ``sketch`` file (HLL,
KLLs only), which nothing reads any more: such a part counts as having no sketch file, so
readers sketch its raw rows, and the next compaction of its hour builds a ``sketch_v2`` file from
the merged rows (the ``PartExtra`` contract). The old file goes when its part does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from storage.errors import StorageError
from storage.sketch import SKETCH_KEYS, SKETCH_SCHEMA, SketchConfig, build_sketches
from storage.sketchmerge import merge_sketch_tables

__all__ = ["SKETCH_KIND", "SketchExtra", "read_sketch_file", "write_sketch_file"]

SKETCH_KIND = "sketch_v2"

# Dictionaries and statistics only for the keys (readers filter on them): the sketch blobs never
# repeat, and min/max statistics of a blob column would copy whole sketches into the footer.
_KEYS = list(SKETCH_KEYS)
# A small group's sorted values as dictionary-coded differences: 0.50 bytes per value on W20,
# against 0.90 delta-packed (a group's first value breaks each miniblock's bit width) and 1.12 as
# a KLL blob.
# Frequent items as delta strings (a shard's groups share their largest producers) and counts
# dictionary-coded: 0.29 bytes per event on W20 against 0.41 for the sketches' blobs.
_WRITE_OPTIONS: dict[str, Any] = {
    "use_dictionary": [*_KEYS, "value_deltas.list.element", "top_counts.list.element"],
    "column_encoding": {"top_producers.list.element": "DELTA_BYTE_ARRAY"},
    "write_statistics": _KEYS,
}

# Rows by shard first: a shard's groups in every category share their largest producers, so
# their frequent-items sketches sit together and compress better (-3 % on W20); readers select
# by key, never by position.
_FILE_ORDER = [("shard", "ascending"), ("category", "ascending"), ("hour", "ascending")]
# Level 3 costs ~6 ns per event more than 1 and saves 3 % (sketches are written once per part).
_COMPRESSION_LEVEL = 3

# What the sketches are built from: the columns build_sketches reads.
_SKETCHED = ["timestamp", "category", "value", "producer_id", "shard"]
_SKETCHED_COLUMNS = ", ".join(_SKETCHED)


def write_sketch_file(table: pa.Table, path: str, compression: str = "zstd") -> None:
    """Write ``table`` (SKETCH_SCHEMA) as Parquet at ``path``; durable (fsynced) when it returns.
    The caller renames it into place."""
    table = table.select(SKETCH_SCHEMA.names).cast(SKETCH_SCHEMA).sort_by(_FILE_ORDER)
    level = _COMPRESSION_LEVEL if compression == "zstd" else None
    with open(path, "wb") as f:
        pq.write_table(table, f, compression=compression, compression_level=level, **_WRITE_OPTIONS)
        f.flush()
        os.fsync(f.fileno())


def read_sketch_file(path: str) -> pa.Table:
    """The SKETCH_SCHEMA rows of a sketch file, sorted by ``SKETCH_KEYS``. Raises
    ``StorageError`` if it cannot be read."""
    try:
        table = pq.read_table(path).select(SKETCH_SCHEMA.names).cast(SKETCH_SCHEMA)
        return table.sort_by([(k, "ascending") for k in SKETCH_KEYS]).combine_chunks()
    except (OSError, pa.ArrowException, KeyError, ValueError) as e:
        raise StorageError(f"sketch file {path} cannot be read: {e}") from e


class SketchExtra:
    """``PartExtra`` of kind ``sketch_v2``: CPC, frequent-items and KLL sketches of a part's rows
    per (category, shard, hour), sized by ``config``."""

    kind = SKETCH_KIND

    def __init__(
        self, config: SketchConfig | None = None, compression: str = "zstd", build_rows: int = 1 << 20
    ) -> None:
        self.config = config or SketchConfig()
        self.compression = compression
        # ``merge_with_rows`` sketches raw parts this many rows at a time at most: the rows and
        # the sort keys of one build are held whole.
        self.build_rows = build_rows

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

    def merge_with_rows(self, paths: Sequence[str], raw: Sequence[tuple[str, int]], path: str) -> None:
        """``merge``, where the parts of ``raw`` (events file, rows) have no sketch file: their
        rows are sketched together, ``build_rows`` at a time, and merged with the files
        ``paths``. Sketching an hour's raw parts at once is cheaper than sketching each and
        merging the sketches: on W20, 0.28-0.40 s for an hour's seven persisted parts (833k
        events), against 0.25-0.50 s to build their sketches one part at a time and 0.86-0.95 s
        more to merge those (``merge_sketch_tables`` works a group at a time, 5,120 groups a
        part), so a node's persists build none (``cluster/node.py``, issue 8)."""
        tables = [read_sketch_file(p) for p in paths]
        for batch in _batches(raw, self.build_rows):
            try:
                rows = pa.concat_tables([pq.read_table(f, columns=_SKETCHED) for f in batch])
            except (OSError, pa.ArrowException) as e:
                raise StorageError(f"events of {batch} cannot be read for sketching: {e}") from e
            tables.append(build_sketches(rows, self.config))
            del rows
        table = tables[0] if len(tables) == 1 else merge_sketch_tables(tables, self.config)
        write_sketch_file(table, path, self.compression)


def _batches(raw: Sequence[tuple[str, int]], rows: int) -> list[list[str]]:
    """The files of ``raw`` (path, rows) in order, in runs of at most ``rows`` rows (a file
    larger than that alone)."""
    out: list[list[str]] = []
    held = 0
    for path, n in raw:
        if not out or held + n > rows:
            out.append([])
            held = 0
        out[-1].append(path)
        held += n
    return out
