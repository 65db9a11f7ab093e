"""The compaction's k-way merge holds about one window of rows at a time, as its docstring says."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from storage.eventmerge import merge_events
from storage.manifest import Manifest
from storage.partition import PartitionConfig, PartitionStore
from tests.eventgen import T0, zipf_stored


@pytest.mark.parametrize("window", [1_000, 2_000, 10**9])
def test_windows_hold_about_window_rows_and_keep_every_row_in_order(tmp_path: Path, window: int) -> None:
    """Real parts: sorted by (category, timestamp), so the row group where one category ends and
    the next begins spans the whole hour (here one in every few row groups, as in W20's parts).
    Each window handed to ``write`` stays near ``window`` rows (row groups straddling its edges
    aside) instead of growing with a category's rows, and together they are every row, in
    (category, timestamp) order."""
    store = PartitionStore(tmp_path, Manifest(tmp_path), PartitionConfig(row_group_rows=256))
    parts = [
        p
        for i in range(8)
        for p in store.write(zipf_stored(i, 2_000, 300, start=T0, hours=1, shards=16, batch_rows=500, first_batch=i))
    ]
    store.close()
    paths = [p.path(tmp_path, "events") for p in parts]
    windows: list[pa.Table] = []
    written = merge_events(paths, ["a", "b", "c"], windows.append, window)
    assert written == sum(w.num_rows for w in windows) == 16_000
    merged = pa.concat_tables(windows)
    keys = list(zip(merged["category"].to_pylist(), merged["timestamp"].to_pylist(), strict=True))
    assert keys == sorted(keys)
    source = pa.concat_tables(pq.read_table(p) for p in paths)
    assert sorted(pc.cast(merged["batch_id"], pa.string()).to_pylist()) == sorted(
        pc.cast(source["batch_id"], pa.string()).to_pylist()
    )
    biggest = max(w.num_rows for w in windows)
    assert biggest <= 2 * window
    if window < 16_000:
        assert len(windows) >= 16_000 // window // 2  # category "a" alone is 60% of the rows
