"""Cluster-wide SQL on three real nodes, RF=2: every node answers like one DuckDB over all the
rows, refuses what cannot be split with a 422 that says why, and ``scope: node`` reads one node."""

from __future__ import annotations

import io
import math
import random
from typing import Any

import duckdb
import httpx
import pyarrow as pa
import pytest

from storage.schema import HOUR_NS, MINUTE_NS, ShardHasher
from tests.eventgen import random_events
from tests.integration.cluster_support import TestCluster, poll, send
from tests.support.process import NodeFactory

pytestmark = pytest.mark.integration

QUERIES = [
    "SELECT count(*) AS n, sum(value) AS total, min(value), max(value), avg(value) FROM events",
    "SELECT category, count(*) AS n, sum(value) AS total FROM events GROUP BY category ORDER BY category",
    "SELECT category, count(DISTINCT producer_id) AS producers FROM events GROUP BY ALL ORDER BY 1",
    "SELECT producer_id, count(*) AS n FROM events WHERE category = 'c1' GROUP BY 1 ORDER BY n DESC, 1 LIMIT 10",
    "SELECT timestamp, producer_id, value FROM events ORDER BY timestamp DESC, producer_id, value LIMIT 15 OFFSET 5",
    "SELECT category, avg(value) AS mean FROM events WHERE value > 1000 GROUP BY 1 HAVING count(*) > 10 ORDER BY 1",
    f"SELECT timestamp // {HOUR_NS} AS hour, count(*) FILTER (WHERE value % 2 = 0) AS even FROM events "
    "GROUP BY hour ORDER BY hour",
    "SELECT category, sum(count) AS n, sum(sum) AS total FROM rollup_minute GROUP BY 1 ORDER BY 1",
    "SELECT DISTINCT category FROM events ORDER BY 1",
    "SELECT count(*) FROM events WHERE false",
]

REFUSED = [
    ("SELECT median(value) FROM events", "median() does not merge"),
    ("SELECT category, sum(value) OVER (PARTITION BY category) FROM events", "window functions"),
    ("SELECT count(DISTINCT category) FROM events", "count(DISTINCT"),
    ("SELECT * FROM events a JOIN rollup_minute b USING (shard)", "JOIN"),
]


def oracle_db(events: pa.Table) -> duckdb.DuckDBPyConnection:
    t = events.append_column("shard", ShardHasher(256)(events.column("producer_id")))
    con = duckdb.connect()
    con.register("events", t)
    con.execute(
        f"CREATE VIEW rollup_minute AS SELECT category, shard, timestamp - timestamp % {MINUTE_NS} AS minute, "
        "count(*) AS count, sum(value)::DECIMAL(38, 0) AS sum FROM events GROUP BY ALL"
    )
    return con


def sql(url: str, query: str, **body: Any) -> httpx.Response:
    return httpx.post(url + "/v1/sql", json={"sql": query, **body}, timeout=60)


def same(got: list[list[Any]], want: list[tuple[Any, ...]]) -> bool:
    if len(got) != len(want):
        return False
    for g, w in zip(got, want, strict=True):
        for a, b in zip(g, w, strict=True):
            if isinstance(b, float) and not math.isclose(a, b, rel_tol=1e-9):
                return False
            if not isinstance(b, float) and a != b:
                return False
    return True


def test_cluster_sql_answers_like_one_database_from_every_node(node_factory: NodeFactory) -> None:
    cluster = TestCluster(node_factory, 3, rf=2, args=["--no-fsync"])
    events = random_events(random.Random(11), 24_000, span=3 * HOUR_NS, producers=3000)
    send(cluster.urls, events)
    oracle = oracle_db(events)

    for node in cluster.nodes.values():
        for query in QUERIES:
            r = sql(node.url, query)
            assert r.status_code == 200, (node.name, query, r.text)
            body = r.json()
            want = oracle.sql(query)
            assert body["partial"] is False and body["missing_shards"] == []
            assert [c["name"] for c in body["columns"]] == want.columns, query
            assert [c["type"] for c in body["columns"]] == [str(t) for t in want.types], query
            assert same(body["rows"], want.fetchall()), (node.name, query, body["rows"][:5])

    n1 = cluster.nodes["n1"]
    # the file formats carry the same merged answer
    query = QUERIES[1]
    r = sql(n1.url, query, format="arrow")
    assert r.status_code == 200
    table = pa.ipc.open_stream(io.BytesIO(r.content)).read_all()
    assert [tuple(d.values()) for d in table.to_pylist()] == oracle.sql(query).fetchall()

    for query, why in REFUSED:
        r = sql(n1.url, query)
        assert r.status_code == 422, (query, r.text)
        detail = r.json()["detail"]
        assert why in detail and '"scope": "node"' in detail, detail
        # the same query over one node's data is fine
        assert sql(n1.url, query, scope="node").status_code == 200, query

    total = sql(n1.url, "SELECT count(*) AS n FROM events").json()["rows"][0][0]
    assert total == events.num_rows
    mine = sql(n1.url, "SELECT count(*) AS n FROM events", scope="node").json()
    assert 0 < mine["rows"][0][0] < total  # RF=2 of 3: n1 holds about two thirds of the shards
    assert "partial" not in mine
    assert sql(n1.url, "SELECT 1", scope="everywhere").status_code == 400


def test_missing_shards_are_reported_and_strict_is_503(node_factory: NodeFactory) -> None:
    cluster = TestCluster(node_factory, 3, rf=2, args=["--no-fsync"])
    events = random_events(random.Random(5), 6000, span=HOUR_NS, producers=3000)
    send(cluster.urls, events)
    n1, n2, n3 = cluster.nodes.values()
    replicas = cluster.info(n1)["replicas"]
    expected = [s for s, r in enumerate(replicas) if set(r) == {"n2", "n3"}]
    assert expected, "rendezvous hashing gives n2+n3 some shards"
    n2.kill()
    n3.kill()
    query = "SELECT count(*) AS n FROM events"
    poll(
        "n1 reports the shards of n2+n3 missing",
        lambda: sql(n1.url, query).json().get("missing_shards") == expected,
        30,
    )
    body = sql(n1.url, query).json()
    held = (
        oracle_db(events)
        .sql(f"SELECT count(*) FROM events WHERE shard NOT IN ({', '.join(map(str, expected))})")
        .fetchall()
    )
    assert body["partial"] is True and body["rows"] == [list(held[0])]
    r = sql(n1.url, query, strict=True)
    assert r.status_code == 503 and r.json()["missing_shards"] == expected
