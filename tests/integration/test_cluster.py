"""Three real nodes, RF=2: the same exact answers from every node, a batch retried through
another node stored once, and honest partial answers when both replicas of a shard are gone."""

from __future__ import annotations

import io
import random
import threading

import httpx
import pyarrow as pa
import pytest

from storage.schema import EVENT_SCHEMA, HOUR_NS
from tests.eventgen import T0, random_events
from tests.integration.cluster_support import ShardOracle, TestCluster, hour_ranges, poll, send
from tests.support.process import NodeFactory

pytestmark = pytest.mark.integration

ARGS = ["--no-fsync"]  # these tests are about routing and merging, not the disk


def arrow(t: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, EVENT_SCHEMA) as w:
        w.write_table(t)
    return sink.getvalue()


def test_every_node_answers_like_the_oracle(node_factory: NodeFactory) -> None:
    cluster = TestCluster(node_factory, 3, rf=2, args=ARGS)
    rng = random.Random(7)
    oracle = ShardOracle()
    parts = [random_events(rng, 10_000, span=3 * HOUR_NS, producers=2000) for _ in range(3)]
    threads = [
        threading.Thread(target=send, args=([node.url], part))
        for node, part in zip(cluster.nodes.values(), parts, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for part in parts:
        oracle.add(part)
    cluster.check_exact(oracle, hour_ranges(T0, 3))
    info = cluster.info(cluster.nodes["n1"])
    assert info["epoch"] == 1 and info["rf"] == 2 and len(info["replicas"]) == 256
    assert all(len(set(r)) == 2 for r in info["replicas"])
    assert {n["node_id"] for n in info["nodes"]} == {"n1", "n2", "n3"}
    assert all(n["up"] and n["state"] == "active" for n in info["nodes"])

    # A batch whose answer was "lost" is retried through another node: stored once.
    extra = random_events(rng, 500, span=3 * HOUR_NS, producers=2000)
    headers = {"content-type": "application/vnd.apache.arrow.stream", "idempotency-key": "retry-through-n3"}
    first = httpx.post(cluster.nodes["n1"].url + "/v1/events", content=arrow(extra), headers=headers, timeout=30)
    again = httpx.post(cluster.nodes["n3"].url + "/v1/events", content=arrow(extra), headers=headers, timeout=30)
    assert first.json() == {"accepted": 500, "duplicate": False}
    assert again.status_code == 200 and again.json()["duplicate"] is True
    oracle.add(extra)
    cluster.check_exact(oracle, hour_ranges(T0, 3)[:1])
    cluster.wait_converged("after ingest")


def test_both_replicas_down_is_partial_and_strict_is_503(node_factory: NodeFactory) -> None:
    cluster = TestCluster(node_factory, 3, rf=2, args=ARGS)
    oracle = ShardOracle()
    events = random_events(random.Random(11), 8000, span=2 * HOUR_NS, producers=3000)
    send(cluster.urls, events)
    oracle.add(events)
    n1, n2, n3 = cluster.nodes.values()
    replicas = cluster.info(n1)["replicas"]
    expected_missing = [s for s, r in enumerate(replicas) if set(r) == {"n2", "n3"}]
    assert expected_missing, "rendezvous hashing gives n2+n3 some shards"
    n2.kill()
    n3.kill()
    start, end = T0, T0 + 2 * HOUR_NS

    def reports_missing() -> bool:
        body = cluster.count(n1, "c0", start, end)
        return bool(body["partial"]) and body["missing_shards"] == expected_missing

    poll("n1 reports the shards of n2+n3 missing", reports_missing, 20)
    body = cluster.count(n1, "c0", start, end)
    assert body["value"] == oracle.aggregate_without("c0", start, end, expected_missing)[0]
    r = cluster.get(n1, "/v1/count", category="c0", start=start, end=end, strict="true")
    assert r.status_code == 503
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["missing_shards"] == expected_missing
    top = cluster.get(n1, "/v1/topk", category="c0", start=start, end=end, k=3).json()
    assert top["partial"] is True and top["missing_shards"] == expected_missing
