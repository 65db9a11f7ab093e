"""The category-at-a-time producer rollup merge gives exactly the rows of merging whole tables."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.rollup import PRODUCER_ROLLUP_SCHEMA, merge_rollups, producer_rollup
from storage.rollupmerge import merge_producer_rollups
from storage.schema import HOUR_NS
from tests.eventgen import random_events, stored


def _write(tmp: Path, rollups: list[pa.Table], group_rows: int, statistics: bool) -> list[str]:
    paths = []
    for i, t in enumerate(rollups):
        path = str(tmp / f"rollup_producer-{i}.parquet")
        pq.write_table(t, path, row_group_size=group_rows, write_statistics=statistics)
        paths.append(path)
    return paths


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    parts=st.integers(1, 5),
    group_rows=st.sampled_from([1, 7, 64, 100_000]),
    statistics=st.booleans(),
)
def test_merging_a_category_at_a_time_equals_merging_whole(
    tmp_path_factory: object, seed: int, parts: int, group_rows: int, statistics: bool
) -> None:
    tmp = tmp_path_factory.mktemp("rollups")  # type: ignore[attr-defined]
    rng = random.Random(seed)
    rows = [
        stored(random_events(rng, rng.randrange(1, 300), start=HOUR_NS * 7, span=HOUR_NS, categories=4, producers=40))
        for _ in range(parts)
    ]
    rollups = [producer_rollup(r) for r in rows]
    paths = _write(tmp, rollups, group_rows, statistics)
    categories = sorted({c for r in rows for c in r["category"].to_pylist()})
    got: list[pa.Table] = []
    counted = merge_producer_rollups(paths, categories, got.append)
    want = merge_rollups([pq.read_table(p) for p in paths], PRODUCER_ROLLUP_SCHEMA)
    merged = pa.concat_tables(got)
    assert merged.schema == want.schema
    # The same rows, sorted by (category, shard, hour) as a producer rollup is; producers within
    # one of those come in the order Arrow's group-by gives them, which follows its batches.
    every_key = [(k, "ascending") for k in ["category", "shard", "hour", "producer_id"]]
    assert merged.sort_by(every_key).equals(want.sort_by(every_key))
    keys = list(zip(*(merged[k].to_pylist() for k in ["category", "shard", "hour"]), strict=True))
    assert keys == sorted(keys)
    assert counted == sum(r.num_rows for r in rows)
    # Each table handed on holds one category: the merge never holds more than that.
    assert all(len(set(t["category"].to_pylist())) == 1 for t in got)


def test_a_category_left_out_is_not_counted(tmp_path: Path) -> None:
    """The caller compares the count with the parts' rows: a category missing from
    ``categories`` shows up as a short count, never as silently lost rows."""
    rows = stored(random_events(random.Random(1), 200, start=HOUR_NS * 7, span=HOUR_NS, categories=3))
    paths = _write(tmp_path, [producer_rollup(rows)], 16, True)
    categories = sorted(set(rows["category"].to_pylist()))
    assert merge_producer_rollups(paths, categories[1:], lambda _: None) < rows.num_rows
    assert merge_producer_rollups(paths, categories, lambda _: None) == rows.num_rows
