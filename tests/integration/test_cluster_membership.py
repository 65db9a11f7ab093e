"""Membership changes under load: a 4th node joins while events stream in, then a node leaves.
Answers stay exact throughout, shards end balanced, and the node that gave shards away keeps
no copy of them."""

from __future__ import annotations

import random
import threading
import time

import httpx
import pytest

from storage.schema import HOUR_NS
from tests.eventgen import T0, random_events
from tests.integration.cluster_support import ShardOracle, TestCluster, poll, send
from tests.support.process import NodeFactory, NodeProcess

pytestmark = pytest.mark.integration

A, B, C = T0, T0 + 4 * HOUR_NS, T0 + 8 * HOUR_NS  # one phase per change, disjoint hours


def _settled_past(cluster: TestCluster, node: NodeProcess, epoch: int) -> bool:
    info = cluster.info(node)
    return bool(info["epoch"] > epoch and not info["in_transition"])


def _exact_while(cluster: TestCluster, oracle: ShardOracle, span: tuple[int, int], busy: threading.Thread) -> int:
    """Query settled data from every running node, round-robin, while ``busy`` runs; returns
    how many answers were checked."""
    checked = 0
    expected = {c: oracle.aggregate(c, *span) for c in ("c0", "c1")}
    top = oracle.topk("c0", *span, 5)
    while busy.is_alive() or checked < 8:
        for node in cluster.running():
            cat = ("c0", "c1")[checked % 2]
            partial, agg, got_top = cluster.answers(node, cat, *span)
            assert not partial, f"{node.name}: partial during the change"
            assert agg == expected[cat], f"{node.name}: {cat} during the change"
            if cat == "c0":
                assert got_top == top, f"{node.name}: top-k during the change"
            checked += 1
    return checked


def _owned_only(cluster: TestCluster) -> bool:
    info = cluster.info(cluster.running()[0])
    owned: dict[str, set[int]] = {}
    for shard, replicas in enumerate(info["replicas"]):
        for r in replicas:
            owned.setdefault(r, set()).add(shard)
    for node in cluster.running():
        held = set(cluster.internal(node, "GET", "/internal/status")["held_shards"])
        if not held <= owned.get(node.name, set()):
            return False
    return True


def test_join_a_fourth_node_then_remove_one(node_factory: NodeFactory) -> None:
    cluster = TestCluster(node_factory, 3, rf=2, args=["--no-fsync"])
    oracle = ShardOracle()
    rng = random.Random(31)
    phase_a = random_events(rng, 15_000, start=A, span=2 * HOUR_NS, producers=3000)
    send(cluster.urls, phase_a)
    oracle.add(phase_a)
    n1, n2 = cluster.nodes["n1"], cluster.nodes["n2"]
    before = cluster.info(n1)

    # -- join n4 while phase B streams in --------------------------------------------------------
    n4 = cluster.add_node("n4")
    phase_b = random_events(rng, 15_000, start=B, span=2 * HOUR_NS, producers=3000)
    writer = threading.Thread(target=send, args=(cluster.urls[:3], phase_b))
    t0 = time.monotonic()
    r = httpx.post(n1.url + "/v1/cluster/nodes", json={"node_id": "n4", "url": n4.url}, timeout=10)
    assert r.status_code == 202, r.text
    joining = r.json()
    assert joining["epoch"] == before["epoch"] + 1
    assert {n["node_id"]: n["state"] for n in joining["nodes"]}["n4"] == "joining"
    writer.start()
    settle = threading.Thread(target=poll, args=("n4 active", lambda: _settled_past(cluster, n1, joining["epoch"]), 90))
    settle.start()
    checked = _exact_while(cluster, oracle, (A, A + 2 * HOUR_NS), settle)
    settle.join()
    writer.join()
    print(f"\njoin: settled in {time.monotonic() - t0:.2f} s, {checked} exact answers meanwhile")
    oracle.add(phase_b)

    after = cluster.info(n1)
    assert [n["state"] for n in after["nodes"]] == ["active"] * 4
    moved = sum(1 for old, new in zip(before["replicas"], after["replicas"], strict=True) if set(old) != set(new))
    print(f"join: {moved} of 256 shards changed replicas (rf/n = {256 * 2 / 4:.0f} expected)")
    assert all(
        "n4" in new for old, new in zip(before["replicas"], after["replicas"], strict=True) if set(old) != set(new)
    )
    loads = {n["node_id"]: n["shards"] for n in after["nodes"]}
    mean = 256 * 2 / 4
    assert all(0.75 * mean <= v <= 1.25 * mean for v in loads.values()), loads
    cluster.wait_converged("after the join")
    poll("no node holds shards it does not own", lambda: _owned_only(cluster), 30)
    cluster.check_exact(oracle, [(A, C), (B + 123, B + HOUR_NS + 7)], categories=("c0", "c2"))

    # -- remove n2 while phase C streams in ------------------------------------------------------
    phase_c = random_events(rng, 10_000, start=C, span=HOUR_NS, producers=3000)
    urls = [cluster.nodes[n].url for n in ("n1", "n3", "n4")]
    writer = threading.Thread(target=send, args=(urls, phase_c))
    t0 = time.monotonic()
    r = httpx.delete(n1.url + "/v1/cluster/nodes/n2", timeout=10)
    assert r.status_code == 202, r.text
    leaving = r.json()
    writer.start()
    settle = threading.Thread(target=poll, args=("n2 gone", lambda: _settled_past(cluster, n1, leaving["epoch"]), 90))
    settle.start()
    checked = _exact_while(cluster, oracle, (A, B + 2 * HOUR_NS), settle)
    settle.join()
    writer.join()
    print(f"leave: settled in {time.monotonic() - t0:.2f} s, {checked} exact answers meanwhile")
    oracle.add(phase_c)

    final = cluster.info(n1)
    assert sorted(n["node_id"] for n in final["nodes"]) == ["n1", "n3", "n4"]
    took = poll("n2 evicted everything", lambda: not cluster.internal(n2, "GET", "/internal/status")["held_shards"], 60)
    print(f"leave: n2 empty {took:.2f} s after settling")
    n2.terminate()
    del cluster.nodes["n2"]
    cluster.wait_converged("after the leave")
    poll("no node holds shards it does not own", lambda: _owned_only(cluster), 30)
    cluster.check_exact(oracle, [(A, C + HOUR_NS), (C + 5, C + HOUR_NS - 5)], categories=("c0", "c1"))
