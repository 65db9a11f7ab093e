"""Producer failover (issue 4): three nodes, RF=2, a ``Producer`` given all three URLs sends a
seeded workload while the node it talks to is SIGKILLed mid-stream. Every event arrives exactly
once: per category, count and sum from every surviving node equal the oracle."""

from __future__ import annotations

import random
import threading

import httpx
import pytest

from storage.schema import HOUR_NS
from tests.eventgen import T0, Oracle, random_events
from tests.integration.cluster_support import TestCluster, patient_producer, poll
from tests.support.process import NodeFactory

pytestmark = pytest.mark.integration

EVENTS = 24_000
BATCH = 500
SQL = "SELECT category, count(*) AS n, sum(value) AS total FROM {view} GROUP BY 1 ORDER BY 1"


def test_a_node_killed_mid_stream_loses_and_doubles_nothing(node_factory: NodeFactory) -> None:
    cluster = TestCluster(node_factory, 3, rf=2, args=["--no-fsync"])
    events = random_events(random.Random(4), EVENTS, span=2 * HOUR_NS, producers=2000)
    oracle = Oracle([events])
    n1, n2, n3 = cluster.nodes.values()
    at_kill: list[int] = []
    done = threading.Event()

    # n1 first: the node the producer talks to is the one that dies
    with patient_producer([n1.url, n2.url, n3.url], BATCH) as producer:

        def killer() -> None:  # SIGKILL once a third is acknowledged: requests in flight to n1 are cut
            while not done.wait(0.002):
                acked = producer.stats.acknowledged
                if acked >= EVENTS // 3:
                    at_kill.append(acked)
                    n1.kill()
                    return

        watcher = threading.Thread(target=killer, daemon=True)
        watcher.start()
        try:
            for offset in range(0, EVENTS, BATCH):
                producer.send_many(events.slice(offset, BATCH))
            assert producer.flush(timeout=120), "the producer did not drain"
        finally:
            done.set()
            watcher.join()
        st = producer.stats

    survivors = [n2, n3]

    def exact_everywhere() -> bool:
        for node in survivors:
            for cat in ("c0", "c1", "c2"):
                body = cluster.count(node, cat, T0, T0 + 2 * HOUR_NS)
                if body["partial"] or body["value"] != oracle.aggregate(cat, T0, T0 + 2 * HOUR_NS)[0]:
                    return False
        return True

    # The survivors stop reading from n1 once the failure detector marks it down.
    poll("every survivor answers complete counts", exact_everywhere, 60)
    stored = 0
    for node in survivors:
        for cat in ("c0", "c1", "c2"):
            want = oracle.aggregate(cat, T0, T0 + 2 * HOUR_NS)
            c = cluster.count(node, cat, T0, T0 + 2 * HOUR_NS)
            s = cluster.get(node, "/v1/sum", category=cat, start=T0, end=T0 + 2 * HOUR_NS).json()
            assert not c["partial"] and not s["partial"]
            assert (c["value"], s["value"]) == want, f"{node.name}: {cat}"
            if node is n2:
                stored += c["value"]
        # cluster-wide SQL from a survivor, with one node of three gone: complete and exact
        r = httpx.post(node.url + "/v1/sql", json={"sql": SQL.format(view="events")}, timeout=60).json()
        assert r["partial"] is False and r["rows"] == [
            list(t) for t in oracle.con.sql(SQL.format(view="oracle")).fetchall()
        ]
    duplicates = stored - EVENTS
    print(
        f"\nfailover: n1 killed at {at_kill[0] if at_kill else None} acknowledged; sent {st.sent}, "
        f"acknowledged {st.acknowledged}, retried {st.retried} request(s), "
        f"answered duplicate {st.duplicates} batch(es), failed {st.failed}, stored {stored}, "
        f"duplicates found {duplicates}"
    )
    assert at_kill and at_kill[0] < EVENTS, "n1 was not killed mid-stream"
    assert st.sent == EVENTS and st.acknowledged == EVENTS and st.failed == 0
    assert duplicates == 0
