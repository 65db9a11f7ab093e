"""Cluster-wide SQL: split + merge over disjoint shard sets equals the query over all the data.

The oracle is DuckDB itself: a generated query from the supported grammar runs once over all the
rows, and once split — its per-node part over each node's shards (views restricted to them), its
merge part over the concatenated partials, renamed and cast to the query's own shape.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from query.errors import SqlNotAllowed, SqlNotSplittable
from query.sqlsplit import PARTIALS, VIEW_COLUMNS, split_sql

SHARDS = 8
MINUTE = 60_000_000_000


def make_events(seed: int, n: int) -> pa.Table:
    rng = random.Random(seed)
    ts = sorted(rng.sample(range(0, 3 * 3600 * 10**9, 1000), n))
    producers = [rng.randrange(24) for _ in range(n)]
    return pa.table(
        {
            "timestamp": pa.array(ts, pa.int64()),
            "category": pa.array([rng.choice("abcd") for _ in range(n)], pa.string()),
            "value": pa.array([rng.randrange(-5, 100) for _ in range(n)], pa.int64()),
            "producer_id": pa.array([f"p{p:02d}" for p in producers], pa.string()),
            "shard": pa.array([p % SHARDS for p in producers], pa.int64()),  # a producer lives in one shard
            "batch_id": pa.array([i // 10 for i in range(n)], pa.int64()),
        }
    )


def _views(con: duckdb.DuckDBPyConnection, events: pa.Table, shards: Sequence[int] | None) -> None:
    con.register("all_events", events)
    cond = "true" if shards is None else (f"shard IN ({', '.join(map(str, shards))})" if shards else "false")
    con.execute(f"CREATE OR REPLACE VIEW events AS SELECT * FROM all_events WHERE {cond}")
    con.execute(
        "CREATE OR REPLACE VIEW rollup_minute AS SELECT category, shard, timestamp - timestamp % "
        f"{MINUTE} AS minute, count(*) AS count, sum(value)::BIGINT AS sum FROM events GROUP BY ALL"
    )
    con.execute(
        "CREATE OR REPLACE VIEW rollup_producer_hour AS SELECT category, shard, timestamp - timestamp % "
        f"{60 * MINUTE} AS hour, producer_id, count(*) AS count, sum(value)::BIGINT AS sum FROM events GROUP BY ALL"
    )


def run(sql: str, events: pa.Table, shards: Sequence[int] | None = None) -> duckdb.DuckDBPyRelation:
    con = duckdb.connect()
    _views(con, events, shards)
    return con.sql(sql)


def run_split(sql: str, events: pa.Table, nodes: Sequence[Sequence[int]], row_cap: int | None = None) -> pa.Table:
    split = split_sql(sql, row_cap)
    if split.local:
        return run(sql, events).to_arrow_table()
    partials = [run(split.node_sql, events, shards).to_arrow_table() for shards in nodes]
    shape = run(sql, events.schema.empty_table())
    con = duckdb.connect()
    con.register(PARTIALS, pa.concat_tables(partials))
    merged = con.sql(split.merge_sql(shape.columns, [str(t) for t in shape.types])).to_arrow_table()
    assert merged.column_names == shape.columns
    return merged


def rows_of(table: pa.Table) -> list[tuple[Any, ...]]:
    return [tuple(r.values()) for r in table.to_pylist()]


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


def assert_equal(got: pa.Table, want: pa.Table, ordered: bool) -> None:
    assert got.column_names == want.column_names
    assert got.schema.types == want.schema.types
    g, w = rows_of(got), rows_of(want)
    if not ordered:
        key = lambda r: tuple((x is None, str(x)) for x in r)  # noqa: E731
        g, w = sorted(g, key=key), sorted(w, key=key)
    assert len(g) == len(w), (len(g), len(w))
    for rg, rw in zip(g, w, strict=True):
        assert all(same(x, y) for x, y in zip(rg, rw, strict=True)), (rg, rw)


def partition(rng: random.Random, n_nodes: int) -> list[list[int]]:
    owner = [rng.randrange(n_nodes) for _ in range(SHARDS)]
    return [[s for s in range(SHARDS) if owner[s] == i] for i in range(n_nodes)]


# -- generated queries ---------------------------------------------------------------------------

WHERES = ["value > 40", "category IN ('a', 'b')", "producer_id < 'p10'", "value % 3 = 0", "shard <> 2", "false"]
KEYS = ["category", "producer_id", "shard", "value % 4", f"timestamp // {MINUTE * 30}"]
AGGS = [
    "count(*)", "sum(value)", "min(value)", "max(value)", "avg(value)", "count(DISTINCT producer_id)",
    "count(value)", "sum(value) FILTER (WHERE value > 50)", "max(value) - min(value)", "count(*) * 2 + 1",
    "count(DISTINCT shard)", "avg(value) FILTER (WHERE category = 'a')",
]  # fmt: skip
PLAIN = ["timestamp", "category", "value", "producer_id", "shard", "value * 2", "upper(category)"]


@st.composite
def aggregate_query(draw: st.DrawFn) -> tuple[str, bool]:
    keys = draw(st.lists(st.sampled_from(KEYS), max_size=2, unique=True))
    aggs = draw(st.lists(st.sampled_from(AGGS), min_size=1, max_size=4, unique=True))
    cols = [f"{k} AS k{i}" for i, k in enumerate(keys)] + [f"{a} AS m{i}" for i, a in enumerate(aggs)]
    sql = f"SELECT {', '.join(cols)} FROM events"
    if draw(st.booleans()):
        sql += f" WHERE {draw(st.sampled_from(WHERES))}"
    if keys:
        style = draw(st.sampled_from(["expr", "ordinal", "alias", "all"]))
        group = {
            "expr": ", ".join(keys),
            "ordinal": ", ".join(str(i + 1) for i in range(len(keys))),
            "alias": ", ".join(f"k{i}" for i in range(len(keys))),
            "all": "ALL",
        }[style]
        sql += f" GROUP BY {group}"
        if draw(st.booleans()):
            sql += f" HAVING count(*) > {draw(st.integers(0, 5))}"
    ordered = bool(keys) and draw(st.booleans())
    if ordered:
        dirs = [draw(st.sampled_from(["", " DESC", " DESC NULLS FIRST"])) for _ in cols]
        items = [f"{i + 1}{d}" for i, d in enumerate(dirs)]
        if draw(st.booleans()):  # an aggregate not selected, first
            items.insert(0, draw(st.sampled_from(["sum(value) DESC", "count(*)", "min(value) DESC"])))
        sql += f" ORDER BY {', '.join(items)}"
        if draw(st.booleans()):
            sql += f" LIMIT {draw(st.integers(0, 12))}"
            if draw(st.booleans()):
                sql += f" OFFSET {draw(st.integers(1, 5))}"
    return sql, ordered


@st.composite
def plain_query(draw: st.DrawFn) -> tuple[str, bool]:
    cols = draw(st.lists(st.sampled_from(PLAIN), min_size=1, max_size=4, unique=True))
    distinct = draw(st.booleans())
    sql = f"SELECT {'DISTINCT ' if distinct else ''}{', '.join(f'{c} AS c{i}' for i, c in enumerate(cols))} FROM events"
    if draw(st.booleans()):
        sql += f" WHERE {draw(st.sampled_from(WHERES))}"
    ordered = draw(st.booleans())
    if ordered:
        if not distinct and draw(st.booleans()):  # timestamps are unique: a total order, not selected
            sql += f" ORDER BY timestamp{draw(st.sampled_from(['', ' DESC']))}"
        else:
            dirs = [draw(st.sampled_from(["", " DESC"])) for _ in cols]
            sql += " ORDER BY " + ", ".join(f"{i + 1}{d}" for i, d in enumerate(dirs))
        if draw(st.booleans()):
            sql += f" LIMIT {draw(st.integers(0, 30))}"
            if draw(st.booleans()):
                sql += f" OFFSET {draw(st.integers(1, 10))}"
    return sql, ordered


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(q=st.one_of(aggregate_query(), plain_query()), seed=st.integers(0, 2**32), n_nodes=st.integers(1, 4))
def test_split_and_merge_equals_one_database(q: tuple[str, bool], seed: int, n_nodes: int) -> None:
    sql, ordered = q
    rng = random.Random(seed)
    events = make_events(seed, rng.randrange(0, 400))
    nodes = partition(rng, n_nodes)
    assert_equal(run_split(sql, events, nodes), run(sql, events).to_arrow_table(), ordered)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM events ORDER BY timestamp DESC LIMIT 7 OFFSET 3",
        "SELECT e.category, count(*) AS n FROM events AS e GROUP BY e.category ORDER BY n DESC, 1",
        "SELECT category, sum(count) AS events, sum(sum) AS total FROM rollup_minute GROUP BY 1 ORDER BY 1",
        "SELECT producer_id, sum(count) AS n FROM rollup_producer_hour GROUP BY ALL ORDER BY n DESC, 1 LIMIT 5",
        "SELECT count(*), sum(value), min(value), max(value), avg(value) FROM events",
        "SELECT count(*), sum(value), avg(value) FROM events WHERE false",
        "SELECT count(DISTINCT producer_id) AS producers FROM events WHERE category = 'a'",
        "SELECT category FROM events GROUP BY category HAVING avg(value) > 40 ORDER BY category",
        "SELECT category, count(*) FILTER (WHERE value > 10) AS big FROM events GROUP BY ALL ORDER BY ALL",
        "SELECT DISTINCT category FROM events ORDER BY 1 LIMIT 2",
        "SELECT 1 + 1 AS two",
    ],
)
def test_known_queries(sql: str) -> None:
    events = make_events(7, 500)
    want = run(sql, events).to_arrow_table()
    for nodes in ([list(range(SHARDS))], [[0, 1, 2], [3, 4, 5], [6, 7]], [[s] for s in range(SHARDS)]):
        assert_equal(run_split(sql, events, nodes), want, ordered="ORDER BY" in sql)


def test_row_cap_bounds_what_each_node_sends() -> None:
    split = split_sql("SELECT value FROM events ORDER BY timestamp", row_cap=100)
    assert split.node_sql.endswith("LIMIT 101")
    split = split_sql("SELECT value FROM events ORDER BY timestamp LIMIT 10 OFFSET 5", row_cap=100)
    assert split.node_sql.endswith("LIMIT 15")
    events = make_events(3, 300)
    sql = "SELECT value, timestamp FROM events ORDER BY timestamp DESC"
    got = run_split(sql, events, [[0, 1, 2, 3], [4, 5, 6, 7]], row_cap=20)
    assert rows_of(got)[:20] == rows_of(run(sql, events).to_arrow_table())[:20]


def test_aggregates_are_not_limited_on_nodes() -> None:
    # groups span nodes: a node's first groups are not the cluster's
    split = split_sql("SELECT category, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC LIMIT 1", row_cap=10)
    assert "LIMIT" not in split.node_sql


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("SELECT median(value) FROM events", "median() does not merge"),
        ("SELECT quantile_cont(value, 0.5) FROM events", "does not merge"),
        ("SELECT count(DISTINCT category) FROM events", "count(DISTINCT …) adds up across nodes only for"),
        ("SELECT sum(DISTINCT value) FROM events", "does not merge"),
        ("SELECT value, sum(value) OVER (PARTITION BY category) FROM events", "window functions"),
        ("SELECT * FROM events a JOIN events b USING (shard)", "JOIN"),
        ("SELECT * FROM events WHERE value > (SELECT avg(value) FROM events)", "subqueries"),
        ("WITH t AS (SELECT * FROM events) SELECT count(*) FROM t", "WITH"),
        ("SELECT category FROM events UNION SELECT category FROM rollup_minute", "set operations"),
        ("SELECT category, count(*) FROM events GROUP BY ROLLUP (category)", "ROLLUP"),
        ("SUMMARIZE events", "SUMMARIZE"),
        ("SELECT string_agg(category, ',') FROM events", "does not merge"),
        ("SELECT DISTINCT category FROM events ORDER BY value", "DISTINCT"),
        ("SELECT value FROM events LIMIT 1 + 1", "LIMIT"),
    ],
)
def test_refusals_say_why_and_suggest_scope_node(sql: str, why: str) -> None:
    with pytest.raises(SqlNotSplittable) as e:
        split_sql(sql)
    assert why in e.value.detail
    assert '"scope": "node"' in e.value.detail


@pytest.mark.parametrize("sql", ["SELECT 1", "DESCRIBE events", "EXPLAIN SELECT count(*) FROM events",
                                 "SELECT * FROM range(3)"])  # fmt: skip
def test_queries_reading_no_view_run_where_they_arrive(sql: str) -> None:
    assert split_sql(sql).local


def test_the_sandbox_check_runs_first() -> None:
    with pytest.raises(SqlNotAllowed):
        split_sql("SELECT * FROM read_csv('/etc/passwd')")


def test_view_columns_match_the_views() -> None:
    con = duckdb.connect()
    _views(con, make_events(1, 10), None)
    for view, cols in VIEW_COLUMNS.items():
        assert set(con.sql(f"SELECT * FROM {view}").columns) == set(cols)
