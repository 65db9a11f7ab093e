"""Sketch files: ``sketch_v2-<part>.parquet`` beside each part, for approximate answers (issue 7).

A sketch file holds ``storage.sketch.SKETCH_SCHEMA`` rows, one per (category, shard, hour) of
its part, built from exactly the part's rows: by a merge from the merged rows as it writes them
(``SketchWriter``), by the completion of a part no merge takes, or when the part is written by a
store that has the extra. Its size is bounded per row by ``SketchConfig.max_bytes()`` whatever
the part's row count. ``SketchExtra`` plugs it into ``PartitionStore`` as a ``PartExtra`` of kind
``sketch_v2``; a part without such a file (a node's persisted parts until compaction, or parts
written while sketches were off) is sketched from its raw rows by the readers themselves.

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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.errors import StorageError
from storage.sketch import SKETCH_KEYS, SKETCH_SCHEMA, SketchConfig, build_sketches
from storage.sketchmerge import merge_sketch_tables

__all__ = ["SKETCH_KIND", "SketchExtra", "SketchWriter", "read_sketch_file", "write_sketch_file"]

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


class SketchWriter:
    """A sketch file built from rows handed in batches (``add``), written by ``finish``.

    Rows are sketched a few hundred thousand at a time, cut where a category ends: a group is a
    (category, shard, hour), so batches of whole categories sketch disjoint groups whose rows
    need no merging afterwards, and the rows and the build's working memory are held for one
    batch, not for the whole part. Sketching W20's hour (833k events) at once held ~130 MiB
    above its rows; in batches of 262k rows ~40 MiB, for the same CPU (0.26-0.33 s either way).
    Any order of rows is correct: a category handed in pieces that do not fit one batch is
    sketched in several, and ``finish`` merges those groups (``merge_sketch_tables``). A merge
    hands the rows in (category, timestamp) order, as it writes them, so that is rare.
    """

    def __init__(self, path: str, config: SketchConfig, compression: str, batch_rows: int) -> None:
        self.path = path
        self.config = config
        self.compression = compression
        self.batch_rows = batch_rows
        self._held: list[pa.Table] = []
        self._held_rows = 0
        self._sketches: list[pa.Table] = []

    def add(self, rows: pa.Table) -> None:
        """Take ``rows`` (STORED_SCHEMA columns, or at least those sketched); once a batch is
        held, sketch it up to where its last category starts (all of it if it is one category)."""
        if rows.num_rows == 0:
            return
        self._held.append(rows.select(_SKETCHED))
        self._held_rows += rows.num_rows
        if self._held_rows >= self.batch_rows:
            self._sketch(keep_last_category=True)

    def _sketch(self, keep_last_category: bool) -> None:
        held = pa.concat_tables(self._held)
        cut = held.num_rows
        if keep_last_category:
            category = held["category"]
            # Rows in category order: where the last category starts (any other order is only
            # split differently).
            cut = pc.index(category, category[-1]).as_py() or held.num_rows
        self._sketches.append(build_sketches(held.slice(0, cut), self.config))
        rest = held.slice(cut)
        self._held = [rest] if rest.num_rows else []
        self._held_rows = rest.num_rows

    def finish(self) -> None:
        """Sketch what is held and write the file, fsynced (the caller renames it into place)."""
        if self._held:
            self._sketch(keep_last_category=False)
        tables = self._sketches or [SKETCH_SCHEMA.empty_table()]
        table = tables[0] if len(tables) == 1 else merge_sketch_tables(tables, self.config)
        self._sketches = []
        write_sketch_file(table, self.path, self.compression)


class SketchExtra:
    """``PartExtra`` of kind ``sketch_v2``: CPC, frequent-items and KLL sketches of a part's rows
    per (category, shard, hour), sized by ``config``."""

    kind = SKETCH_KIND

    def __init__(
        self, config: SketchConfig | None = None, compression: str = "zstd", batch_rows: int = 1 << 18
    ) -> None:
        self.config = config or SketchConfig()
        self.compression = compression
        # A ``writer`` sketches about this many rows at a time (``SketchWriter``).
        self.batch_rows = batch_rows

    def build(self, con: duckdb.DuckDBPyConnection, rows_relation: str, path: str) -> None:
        """Sketch the rows of ``rows_relation`` (STORED_SCHEMA columns) into ``path``, fsynced."""
        rows = con.sql(f"SELECT {_SKETCHED_COLUMNS} FROM {rows_relation}").to_arrow_table()
        write_sketch_file(build_sketches(rows, self.config), path, self.compression)

    def merge(self, con: duckdb.DuckDBPyConnection, paths: Sequence[str], path: str) -> None:
        """Merge the sketch files ``paths`` into ``path``, fsynced: rows of one key are merged
        sketch by sketch, so the result summarises exactly the union of the parts' rows."""
        tables = [read_sketch_file(p) for p in paths]
        write_sketch_file(merge_sketch_tables(tables, self.config), path, self.compression)

    def writer(self, path: str) -> SketchWriter:
        """A ``SketchWriter`` of ``path``: a merge hands it the merged rows as it writes them, so
        the parts' rows are sketched once more rather than their sketch files merged. On W20
        that is the cheaper of the two: an hour's 833k events sketch in 0.26-0.33 s, and merging
        its seven persisted parts' sketches took 0.86-0.95 s (``merge_sketch_tables`` works a
        group at a time, 5,120 groups a part), so a node's persists build none
        (``cluster/node.py``, issue 8). It also needs no second read of the rows."""
        return SketchWriter(path, self.config, self.compression, self.batch_rows)
