"""Arrow rollups against DuckDB's: every path (dense grid, hash aggregation, decimal sums)."""

from __future__ import annotations

import random

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage import rollup
from storage.rollup import MINUTE_ROLLUP_SQL, PRODUCER_ROLLUP_SQL, merge_rollups, minute_rollup, producer_rollup
from storage.schema import HOUR_NS
from tests.eventgen import random_events, stored


def duck(sql: str, rows: pa.Table) -> list[tuple]:
    con = duckdb.connect()
    con.register("src", rows)
    return con.sql(f"SELECT * REPLACE (sum::HUGEINT AS sum) FROM ({sql.format(src='src')})").fetchall()


def ours(table: pa.Table) -> list[tuple]:
    con = duckdb.connect()
    con.register("t", table)
    return con.sql("SELECT * REPLACE (sum::HUGEINT AS sum) FROM t").fetchall()


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(0, 400),
    span=st.sampled_from([10**9, HOUR_NS, 30 * 24 * HOUR_NS]),
    big=st.booleans(),
    dense=st.booleans(),
)
def test_rollups_equal_duckdb(seed: int, n: int, span: int, big: bool, dense: bool) -> None:
    rng = random.Random(seed)
    rows = stored(random_events(rng, n, span=span, categories=4), shards=rng.choice([1, 7, 256]))
    if big:
        values = pa.array([rng.choice([2**63 - 1, -(2**63), 2**62, 5]) for _ in range(n)], pa.int64())
        rows = rows.set_column(2, "value", values)
    with pytest.MonkeyPatch.context() as patch:
        if not dense:
            patch.setattr(rollup, "_DENSE_CELLS", 0)
        got = minute_rollup(rows)
    assert got.schema == rollup.MINUTE_ROLLUP_SCHEMA
    assert ours(got) == duck(MINUTE_ROLLUP_SQL, rows)
    assert sorted(ours(producer_rollup(rows))) == sorted(duck(PRODUCER_ROLLUP_SQL, rows))
    halves = [minute_rollup(rows.slice(0, n // 2)), minute_rollup(rows.slice(n // 2))]
    assert ours(merge_rollups(halves, rollup.MINUTE_ROLLUP_SCHEMA)) == ours(got)
