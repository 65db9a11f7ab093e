"""The lean rollup merges (producer rollups a category at a time, minute rollups as integer
arrays) give exactly the rows of merging whole tables with Arrow."""

from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.rollup import (
    MINUTE_ROLLUP_SCHEMA,
    PRODUCER_ROLLUP_SCHEMA,
    SUM_ARROW,
    merge_rollups,
    minute_rollup,
    producer_rollup,
)
from storage.rollupmerge import merge_minute_rollups, merge_producer_rollups
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


def _minute_files(tmp: Path, rollups: list[pa.Table]) -> list[str]:
    paths = []
    for i, t in enumerate(rollups):
        path = str(tmp / f"rollup_minute-{i}.parquet")
        pq.write_table(t, path, row_group_size=50)
        paths.append(path)
    return paths


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), parts=st.integers(1, 6), categories=st.integers(1, 30))
def test_the_integer_minute_merge_equals_the_arrow_merge(
    tmp_path_factory: object, seed: int, parts: int, categories: int
) -> None:
    """The same table, byte for byte in the file that is written from it: rows, order and types."""
    tmp = tmp_path_factory.mktemp("minutes")  # type: ignore[attr-defined]
    rng = random.Random(seed)
    rows = [
        stored(
            random_events(
                rng, rng.randrange(0, 400), start=HOUR_NS * 7, span=HOUR_NS, categories=categories, producers=50
            )
        )
        for _ in range(parts)
    ]
    paths = _minute_files(tmp, [minute_rollup(r) for r in rows])
    want = merge_rollups([pq.read_table(p) for p in paths], MINUTE_ROLLUP_SCHEMA)
    got = merge_minute_rollups(paths)
    assert got.equals(want)
    assert sum(got["count"].to_pylist()) == sum(r.num_rows for r in rows)


def test_minute_sums_past_int64_are_merged_exactly(tmp_path: Path) -> None:
    """Sums whose total does not fit int64 (and one that alone does not) take the DECIMAL path."""
    big = (1 << 62) + 5
    key = {"category": ["a", "b"], "shard": [3, 3], "minute": [0, 0], "count": [1, 2]}

    def rollup(sums: list[int]) -> pa.Table:
        return pa.table({**key, "sum": pa.array(sums, SUM_ARROW)}, schema=MINUTE_ROLLUP_SCHEMA)

    paths = _minute_files(tmp_path, [rollup([big, -7]), rollup([big, 1]), rollup([1 << 70, 0])])
    got = merge_minute_rollups(paths)
    assert got["sum"].to_pylist() == [Decimal(2 * big + (1 << 70)), Decimal(-6)]
    assert got["count"].to_pylist() == [3, 6]
    assert got.equals(merge_rollups([pq.read_table(p) for p in paths], MINUTE_ROLLUP_SCHEMA))
    two = merge_minute_rollups(paths[:2])  # each sum fits int64, their total does not
    assert two["sum"].to_pylist() == [Decimal(2 * big), Decimal(-6)]


def test_no_minute_rows_merge_to_an_empty_rollup(tmp_path: Path) -> None:
    paths = _minute_files(tmp_path, [MINUTE_ROLLUP_SCHEMA.empty_table()])
    assert merge_minute_rollups(paths).equals(MINUTE_ROLLUP_SCHEMA.empty_table())
