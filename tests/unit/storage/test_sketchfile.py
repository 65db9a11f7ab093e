"""Sketch files: what is written, and that files of earlier writers still read."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.errors import StorageError
from storage.sketch import SKETCH_SCHEMA, SketchConfig, build_sketches
from storage.sketchfile import SketchExtra, read_sketch_file, write_sketch_file
from tests.unit.storage.test_sketch import workload


@pytest.fixture(scope="module")
def sketches() -> pa.Table:
    return build_sketches(workload(seed=11, n=20_000, producers=3_000))


def test_round_trip(tmp_path: Path, sketches: pa.Table) -> None:
    path = tmp_path / "sketch.parquet"
    write_sketch_file(sketches, str(path))
    assert read_sketch_file(str(path)) == sketches


def test_statistics_only_for_the_keys_and_dictionaries_for_keys_and_values(tmp_path: Path) -> None:
    # Groups of ~140 events: most keep their values (kll_k 200), the busiest shards' get a KLL.
    sketches = build_sketches(workload(seed=12, n=20_000, producers=3_000, shards=16))
    assert 0 < sketches["kll"].null_count < sketches.num_rows
    path = tmp_path / "sketch.parquet"
    write_sketch_file(sketches, str(path))
    meta = pq.ParquetFile(path).metadata
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            column = meta.row_group(g).column(c)
            key = column.path_in_schema in ("category", "shard", "hour")
            # A blob's min/max would copy whole sketches into the footer.
            assert column.is_stats_set == key, column.path_in_schema
            coded = key or column.path_in_schema in ("value_deltas.list.element", "top_counts.list.element")
            assert ("RLE_DICTIONARY" in column.encodings) == coded, column.path_in_schema
    # Stored by shard first (frequent-items sketches compress better), read back by key.
    assert pq.read_table(path)["shard"].to_pylist() == sorted(sketches["shard"].to_pylist())
    assert read_sketch_file(str(path)) == sketches


def test_files_of_the_earlier_writer_still_read(tmp_path: Path, sketches: pa.Table) -> None:
    # The writer before the build changes: pyarrow defaults (dictionaries and statistics on
    # every column). The columns and their meaning did not change, so such files read as before.
    path = tmp_path / "old.parquet"
    pq.write_table(sketches, path, compression="zstd")
    assert read_sketch_file(str(path)) == sketches


def test_unreadable_files_are_storage_errors(tmp_path: Path, sketches: pa.Table) -> None:
    missing = tmp_path / "missing-column.parquet"
    pq.write_table(sketches.drop_columns(["kll"]), missing)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    for path in (missing, garbage, tmp_path / "absent.parquet"):
        with pytest.raises(StorageError, match="cannot be read"):
            read_sketch_file(str(path))
    assert "kll" in SKETCH_SCHEMA.names


def test_build_paths_write_the_same_sketches(tmp_path: Path) -> None:
    rows = workload(seed=13, n=6_000, producers=1_000, hours=1)
    rows = rows.sort_by([("category", "ascending"), ("timestamp", "ascending")])
    extra = SketchExtra(SketchConfig(hll_lg_k=8, frequent_lg_max_k=4, kll_k=16))
    con = duckdb.connect()
    con.register("part_rows", rows)
    extra.build(con, "part_rows", str(tmp_path / "duckdb.parquet"))
    whole = extra.writer(str(tmp_path / "whole.parquet"))
    whole.add(rows)
    whole.finish()
    windows = extra.writer(str(tmp_path / "windows.parquet"))
    for start in range(0, rows.num_rows, 1_000):
        windows.add(rows.slice(start, 1_000))
    windows.finish()
    tables = [
        read_sketch_file(str(tmp_path / f"{name}.parquet")).drop_columns(["kll"])
        for name in ("duckdb", "whole", "windows")
    ]
    assert tables[0].num_rows > 1
    assert tables[0] == tables[1] == tables[2]


@pytest.mark.parametrize("batch_rows", [700, 2_500, 1 << 20])
def test_a_writer_sketches_whole_categories_a_batch_at_a_time(
    tmp_path: Path, batch_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows handed in (category, timestamp) order in windows, as a merge writes them: the file
    counts every row per (category, shard, hour) against a DuckDB oracle and keeps small groups'
    values; with batches larger than any category it is exactly the sketch of all the rows at
    once (KLL aside: its compaction is randomised). No build holds more than a batch and a
    window, and none splits a category that fits a batch."""
    config = SketchConfig(hll_lg_k=8, frequent_lg_max_k=4, kll_k=16)
    rows = workload(seed=17, n=9_000, producers=1_500, categories=8, hours=2)
    rows = rows.sort_by([("category", "ascending"), ("timestamp", "ascending")])
    builds: list[pa.Table] = []

    def recorded(batch: pa.Table, cfg: SketchConfig) -> pa.Table:
        builds.append(batch)
        return build_sketches(batch, cfg)

    monkeypatch.setattr("storage.sketchfile.build_sketches", recorded)
    writer = SketchExtra(config, batch_rows=batch_rows).writer(str(tmp_path / "sketch.parquet"))
    window = 400
    for start in range(0, rows.num_rows, window):
        writer.add(rows.slice(start, window))
    writer.finish()
    written = read_sketch_file(str(tmp_path / "sketch.parquet")).drop_columns(["kll"])

    con = duckdb.connect()
    con.register("rows", rows)
    counts = con.sql(
        "SELECT category, shard, timestamp - timestamp % 3600000000000 AS hour, count(*) FROM rows "
        "GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert [tuple(r.values()) for r in written.select(["category", "shard", "hour", "n"]).to_pylist()] == counts
    at_once = build_sketches(rows, config).drop_columns(["kll"])
    assert written["value_deltas"] == at_once["value_deltas"]
    assert sum(b.num_rows for b in builds) == rows.num_rows
    assert all(b.num_rows <= batch_rows + window for b in builds)
    per_category = dict(con.sql("SELECT category, count(*) FROM rows GROUP BY ALL").fetchall())
    if batch_rows >= max(per_category.values()):
        assert written == at_once
        for b in builds:
            con.register("built", b)
            built = dict(con.sql("SELECT category, count(*) FROM built GROUP BY ALL").fetchall())
            assert built == {c: per_category[c] for c in built}  # whole categories
    assert (len(builds) == 1) == (batch_rows >= rows.num_rows)
