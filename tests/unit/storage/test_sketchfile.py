"""Sketch files: what is written, and that files of earlier writers still read."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import datasketches as ds
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import storage.sketchfile
from storage.errors import StorageError
from storage.rollup import producer_rollup
from storage.sketch import SKETCH_SCHEMA, SketchConfig, build_sketches
from storage.sketchfile import MERGE_FAN_IN, SketchExtra, read_sketch_file, write_sketch_file
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


def test_a_merge_of_many_files_holds_few_at_once_and_its_bounds_stay_hard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 files merge in stages of at most ``MERGE_FAN_IN`` tables (the rows merged so far and
    the next files), and the result still counts every row and bounds every producer."""
    extra = SketchExtra()
    chunks = [workload(seed=100 + i, n=900, producers=300, hours=1) for i in range(20)]
    paths = []
    for i, rows in enumerate(chunks):
        paths.append(str(tmp_path / f"sketch-{i}.parquet"))
        extra.build_table(rows, paths[-1])
    held: list[int] = []
    merge = storage.sketchfile.merge_sketch_tables

    def counting(tables: list[pa.Table], config: SketchConfig) -> pa.Table:
        held.append(len(tables))
        return merge(tables, config)

    monkeypatch.setattr(storage.sketchfile, "merge_sketch_tables", counting)
    extra.merge(duckdb.connect(), paths, str(tmp_path / "merged.parquet"))
    assert held == [7, 8, 7] and MERGE_FAN_IN == 8  # 7 files, then the rows so far with 7, then with 6

    merged = read_sketch_file(str(tmp_path / "merged.parquet"))
    rows = pa.concat_tables(chunks)
    truth: dict[tuple[str, int], Counter[str]] = {}
    keys = zip(rows["category"].to_pylist(), rows["shard"].to_pylist(), rows["producer_id"].to_pylist(), strict=True)
    for category, shard, producer in keys:
        truth.setdefault((category, shard), Counter())[producer] += 1
    assert merged.num_rows == len(truth)
    for row in merged.to_pylist():
        counts = truth[(row["category"], row["shard"])]
        assert row["n"] == sum(counts.values())
        cpc = ds.cpc_sketch.deserialize(row["cpc"])
        assert cpc.get_lower_bound(3) <= len(counts) <= cpc.get_upper_bound(3)
        if row["top_producers"] is not None:  # exact lower bounds, and nobody left out has more
            listed = dict(zip(row["top_producers"], row["top_counts"], strict=True))
            for producer, n in counts.items():
                if producer in listed:
                    assert listed[producer] <= n <= listed[producer] + row["frequent_error"]
                else:
                    assert n <= row["frequent_error"]
