"""Row ranges read from a few row groups equal a full read; caches stay within their budgets."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from query.part_reader import PartReader, ReaderConfig


def write(path: Path, n: int, group: int) -> pa.Table:
    table = pa.table({"timestamp": pa.array(range(n), pa.int64()), "producer_id": [f"p{i % 97}" for i in range(n)]})
    pq.write_table(table, path, row_group_size=group)
    return table


def test_any_row_range_equals_a_full_read(tmp_path: Path) -> None:
    rng = random.Random(1)
    table = write(tmp_path / "a.parquet", 5000, 333)
    reader = PartReader(ReaderConfig(cache_bytes=20_000))
    for _ in range(200):
        first = rng.randrange(0, 5001)
        stop = rng.randrange(first, min(5000, first + 1500) + 1)
        names = rng.choice([["timestamp"], ["producer_id", "timestamp"]])
        got = reader.columns(str(tmp_path / "a.parquet"), first, stop, names)
        for n in names:
            assert got[n].equals(table.column(n).slice(first, stop - first).combine_chunks())
    assert reader._groups.nbytes <= 20_000 or len(reader._groups) == 1
    with pytest.raises(IndexError):
        reader.columns(str(tmp_path / "a.parquet"), 10, 5001, ["timestamp"])


def test_open_files_are_bounded_and_forgotten(tmp_path: Path) -> None:
    paths = [str(tmp_path / f"{i}.parquet") for i in range(20)]
    for p in paths:
        write(Path(p), 1000, 100)
    meta = pq.read_metadata(paths[0])
    cost = 900 * meta.num_row_groups * meta.num_columns + 4096
    reader = PartReader(ReaderConfig(file_bytes=5 * cost))
    for p in paths:
        assert reader.columns(p, 0, 10, ["timestamp"])["timestamp"].to_pylist() == list(range(10))
    assert len(reader._files) == 5 and reader._files.nbytes == 5 * cost
    reader.forget(set(paths))
    assert not reader._files and not reader._groups
    assert reader._files.nbytes == 0 and reader._groups.nbytes == 0
