"""Sketch files: what is written, and that files of earlier writers still read."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.errors import StorageError
from storage.rollup import producer_rollup
from storage.sketch import SKETCH_SCHEMA, SketchConfig, build_sketches
from storage.sketchfile import SketchExtra, read_sketch_file, write_sketch_file
from storage.sketchmerge import merge_sketch_tables
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
    extra = SketchExtra(SketchConfig(hll_lg_k=8, frequent_lg_max_k=4, kll_k=16))
    con = duckdb.connect()
    con.register("part_rows", rows)
    extra.build(con, "part_rows", str(tmp_path / "duckdb.parquet"))
    extra.build_table(rows, str(tmp_path / "table.parquet"))
    extra.build_table(rows, str(tmp_path / "rollup.parquet"), producer_rollup(rows))
    tables = [
        read_sketch_file(str(tmp_path / f"{name}.parquet")).drop_columns(["kll"])
        for name in ("duckdb", "table", "rollup")
    ]
    assert tables[0].num_rows > 1
    assert tables[0] == tables[1] == tables[2]


@pytest.mark.parametrize("build_rows", [2_500, 1 << 20])
def test_raw_parts_are_sketched_and_merged_with_the_others(tmp_path: Path, build_rows: int) -> None:
    """A merge of parts of which some have no sketch file (a node's persists build none): the
    merged file counts every row of every part per (category, shard, hour); sketched one raw
    part at a time it equals merging every part's own sketches, sketched together it keeps the
    same counts and small groups' values."""
    config = SketchConfig(hll_lg_k=8, frequent_lg_max_k=4, kll_k=16)
    rows = workload(seed=17, n=9_000, producers=1_500, hours=2)
    pieces = [rows.slice(0, 2_000), rows.slice(2_000, 2_500), rows.slice(4_500, 2_000), rows.slice(6_500)]
    extra = SketchExtra(config, build_rows=build_rows)
    sketched = []
    for i, piece in enumerate(pieces[:2]):
        sketched.append(str(tmp_path / f"sketch-{i}.parquet"))
        extra.build_table(piece, sketched[-1])
    raw = []
    for i, piece in enumerate(pieces[2:]):
        raw.append((str(tmp_path / f"events-{i}.parquet"), piece.num_rows))
        pq.write_table(piece, raw[-1][0])
    extra.merge_with_rows(sketched, raw, str(tmp_path / "merged.parquet"))
    merged = read_sketch_file(str(tmp_path / "merged.parquet")).drop_columns(["kll"])

    per_piece = merge_sketch_tables([build_sketches(p, config) for p in pieces], config).drop_columns(["kll"])
    con = duckdb.connect()
    con.register("rows", rows)
    counts = con.sql(
        "SELECT category, shard, timestamp - timestamp % 3600000000000 AS hour, count(*) FROM rows "
        "GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert [tuple(r.values()) for r in merged.select(["category", "shard", "hour", "n"]).to_pylist()] == counts
    if build_rows < 2_000 + 2_500:  # the raw parts apart: exactly what merging their own sketches gives
        assert merged == per_piece
    else:
        assert merged["value_deltas"] == per_piece["value_deltas"]
