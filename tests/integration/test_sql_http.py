"""SQL over HTTP and export against the oracle, on a real node."""

from __future__ import annotations

import io
import random
import threading
import time
import uuid

import duckdb
import httpx
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from storage.schema import HOUR_NS
from tests.eventgen import T0, Oracle, random_events
from tests.integration.test_single_node import post
from tests.support.process import NodeFactory, NodeProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def loaded(node_factory: NodeFactory) -> tuple[NodeProcess, Oracle]:
    rng = random.Random(55)
    node = node_factory("n1", args=["--persist-interval-s", "3600"])
    oracle = Oracle()
    for i in range(4):
        t = random_events(rng, 3000)
        assert post(node, t, "arrow", key=f"s{i}").status_code == 200
        oracle.add(t)
        if i == 1:
            httpx.post(node.url + "/v1/admin/persist")  # half in parts, half in the buffer
    return node, oracle


def sql(node: NodeProcess, q: str, **kw: object) -> httpx.Response:
    return httpx.post(node.url + "/v1/sql", json={"sql": q, **kw}, timeout=60)


def test_sql_answers_equal_the_oracle(loaded: tuple[NodeProcess, Oracle]) -> None:
    node, oracle = loaded
    queries = [
        "SELECT category, count(*) AS n, sum(value) AS s FROM events GROUP BY category ORDER BY category",
        "SELECT producer_id, count(*) AS n FROM events WHERE category = 'c1' GROUP BY 1 ORDER BY n DESC, 1 LIMIT 7",
        f"SELECT count(*) FROM events WHERE timestamp >= {T0 + 123456789} AND timestamp < {T0 + HOUR_NS + 17}",
        "SELECT count(DISTINCT producer_id) FROM events",
        "SELECT min(value), max(value), avg(value)::DOUBLE FROM events WHERE category = 'c2'",
    ]
    for q in queries:
        r = sql(node, q)
        assert r.status_code == 200, r.text
        body = r.json()
        want = oracle.con.sql(q.replace("events", "oracle")).fetchall()
        assert [tuple(row) for row in body["rows"]] == [tuple(w) for w in want], q
        assert body["truncated"] is False and body["row_count"] == len(want)


def test_rollup_views_agree_with_raw_rows(loaded: tuple[NodeProcess, Oracle]) -> None:
    node, _ = loaded
    raw = sql(node, "SELECT category, count(*) FROM events GROUP BY 1 ORDER BY 1").json()["rows"]
    rolled = sql(node, "SELECT category, sum(count)::BIGINT FROM rollup_minute GROUP BY 1 ORDER BY 1").json()["rows"]
    assert raw == rolled


def test_result_formats_and_cap(loaded: tuple[NodeProcess, Oracle]) -> None:
    node, oracle = loaded
    total = sum(t.num_rows for t in oracle.tables)
    capped = sql(node, "SELECT * FROM events", max_rows=100).json()
    assert capped["row_count"] == 100 and capped["truncated"] is True
    pq_body = sql(node, "SELECT * FROM events", format="parquet")
    assert pq_body.status_code == 200 and "attachment" in pq_body.headers["content-disposition"]
    assert pq.read_table(io.BytesIO(pq_body.content)).num_rows == total
    csv_body = sql(node, "SELECT category, count(*) AS n FROM events GROUP BY 1", format="csv")
    assert pacsv.read_csv(io.BytesIO(csv_body.content)).num_rows == 3
    arrow_body = sql(node, "SELECT value FROM events", format="arrow")
    assert pa.ipc.open_stream(arrow_body.content).read_all().num_rows == total


def test_refusals_are_problem_details(loaded: tuple[NodeProcess, Oracle]) -> None:
    node, _ = loaded
    for q, status in [
        ("SELECT * FROM read_csv('/etc/passwd')", 403),
        ("DROP VIEW events", 403),
        ("SELECT 1; SELECT 2", 403),
        ("SELEC nonsense", 400),
        ("SELECT no_such_column FROM events", 400),
    ]:
        r = sql(node, q)
        assert r.status_code == status, (q, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    assert httpx.post(node.url + "/v1/sql", json={"format": "json"}).status_code == 400
    assert sql(node, "SELECT 1", format="xml").status_code == 400


def test_cancel_stops_a_running_query(loaded: tuple[NodeProcess, Oracle]) -> None:
    node, _ = loaded
    qid = uuid.uuid4().hex
    got: list[httpx.Response] = []
    bomb = "SELECT count(*) FROM range(1000000) a, range(1000000) b WHERE a.range + b.range = -1"
    t = threading.Thread(target=lambda: got.append(sql(node, bomb, query_id=qid)))
    t.start()
    cancelled = False
    deadline = time.monotonic() + 20
    while not cancelled and time.monotonic() < deadline:
        cancelled = httpx.post(node.url + "/v1/sql/cancel", json={"query_id": qid}).json()["cancelled"]
        time.sleep(0.05)
    t.join(timeout=30)
    assert cancelled
    assert got[0].status_code == 409, got[0].text
    assert httpx.get(node.url + "/health").status_code == 200


def test_tables_lists_views_and_columns(loaded: tuple[NodeProcess, Oracle]) -> None:
    node, _ = loaded
    tables = {t["name"]: [c["name"] for c in t["columns"]] for t in httpx.get(node.url + "/v1/tables").json()["tables"]}
    assert tables["events"] == ["timestamp", "category", "value", "producer_id", "shard", "batch_id"]
    assert tables["rollup_minute"] == ["category", "shard", "minute", "count", "sum"]
    assert tables["rollup_producer_hour"] == ["category", "shard", "hour", "producer_id", "count", "sum"]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "arrow"])
def test_export_streams_exactly_the_slice(loaded: tuple[NodeProcess, Oracle], fmt: str) -> None:
    node, oracle = loaded
    s, e = T0 + 987_654_321, T0 + 2 * HOUR_NS + 5
    with httpx.stream(
        "GET", node.url + "/v1/export", params={"category": "c0", "start": s, "end": e, "format": fmt}, timeout=60
    ) as r:
        assert r.status_code == 200
        assert "attachment" in r.headers["content-disposition"]
        body = b"".join(r.iter_bytes())
    if fmt == "parquet":
        table = pq.read_table(io.BytesIO(body))
        assert pl.read_parquet(io.BytesIO(body)).height == table.num_rows
        con = duckdb.connect()
        con.register("exported", table)
        assert con.sql("SELECT count(*) FROM exported").fetchall()[0][0] == table.num_rows
    elif fmt == "csv":
        table = pacsv.read_csv(io.BytesIO(body))
    else:
        table = pa.ipc.open_stream(body).read_all()
    want_count, want_sum = oracle.aggregate("c0", s, e)
    assert table.num_rows == want_count
    assert sum(table.column("value").to_pylist()) == want_sum
