"""Helpers for cluster integration tests: start N real nodes as one cluster, feed them through
the real producer client, ask them questions, and poll until replicas converge.

Fast failure detection for tests: probes every 0.2 s with a 1 s timeout (generous: the machine
is shared), peer calls time out after 2 s, anti-entropy every second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import duckdb
import httpx
import pyarrow as pa

from ingest.client import Producer
from storage.schema import HOUR_NS, ShardHasher
from tests.eventgen import Oracle
from tests.support.process import NodeFactory, NodeProcess, free_port

__all__ = ["SECRET", "ShardOracle", "TestCluster", "poll", "send"]

SECRET = "cluster-test-secret-5f1c"
FAST = ["--probe-interval-s", "0.2", "--probe-timeout-s", "1", "--peer-timeout-s", "2", "--repair-interval-s", "1"]


def poll(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.2) -> float:
    """Poll ``check`` until true; returns the seconds it took. Fails the test at the deadline."""
    t0 = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not true after {timeout} s")
        time.sleep(interval)


def patient_producer(urls: list[str], batch: int) -> Producer:
    """A producer with short timeouts and quick retries that keeps trying for two minutes: what
    a fault test needs to ride out a killed or frozen node."""
    return Producer(
        urls,
        batch_events=batch,
        linger_s=0.05,
        request_timeout_s=5.0,
        connect_timeout_s=1.0,
        backoff_base_s=0.05,
        backoff_cap_s=1.0,
        retry_max_elapsed_s=120.0,
        discover=False,
    )


def send(
    urls: Sequence[str], events: pa.Table, *, batch: int = 1000, on_progress: Callable[[int], None] | None = None
) -> None:
    """Send ``events`` through the real producer client (keys, retries, failover) and wait
    until every batch is acknowledged. ``on_progress(acknowledged)`` is called from a watcher
    thread every few milliseconds meanwhile (to inject a fault mid-ingest)."""
    done = threading.Event()
    with patient_producer(list(urls), batch) as producer:
        watcher = None
        if on_progress is not None:
            hook = on_progress

            def watch() -> None:
                while not done.wait(0.005):
                    hook(producer.stats.acknowledged)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
        try:
            for offset in range(0, events.num_rows, batch):
                producer.send_many(events.slice(offset, batch))
            assert producer.flush(timeout=120), "producer did not drain"
        finally:
            done.set()
            if watcher is not None:
                watcher.join()
        st = producer.stats
    assert st.failed == 0 and st.acknowledged == events.num_rows, st


class ShardOracle(Oracle):
    """The oracle, also able to answer over a subset of shards (for partial answers)."""

    def __init__(self, shards: int = 256) -> None:
        super().__init__()
        self.hasher = ShardHasher(shards)

    def aggregate_without(self, category: str, start: int, end: int, missing: Iterable[int]) -> tuple[int, int]:
        t = pa.concat_tables(self.tables)
        t = t.append_column("shard", self.hasher(t.column("producer_id")))
        con = duckdb.connect()
        con.register("o", t)
        miss = sorted(missing) or [-1]
        ((c, s),) = con.sql(
            f"SELECT count(*), coalesce(sum(value), 0) FROM o WHERE category = $c AND timestamp >= $s "
            f"AND timestamp < $e AND shard NOT IN ({', '.join(map(str, miss))})",
            params={"c": category, "s": start, "e": end},
        ).fetchall()
        return int(c), int(s)


class TestCluster:
    """N nodes n1..nN with one peer list, one secret and fast failure detection."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, factory: NodeFactory, n: int = 3, rf: int = 2, args: Sequence[str] = ()) -> None:
        self.factory = factory
        self.rf = rf
        self.args = list(args)
        ports = {f"n{i + 1}": free_port() for i in range(n)}
        peers = ",".join(f"{k}=http://127.0.0.1:{p}" for k, p in ports.items())
        self.nodes: dict[str, NodeProcess] = {}
        for node_id, port in ports.items():
            self.nodes[node_id] = factory(
                node_id,
                port=port,
                args=["--node-id", node_id, "--peers", peers, "--rf", str(rf), *FAST, *self.args],
                env={"TRIBUTARY_CLUSTER_SECRET": SECRET},
                start=False,
            )
        for node in self.nodes.values():
            node.start()
        for node in self.nodes.values():
            node.wait_ready(60)
        self.wait_serving()

    def add_node(self, node_id: str) -> NodeProcess:
        """Start a node on its own (a cluster of one, with the secret), ready to be joined."""
        node = self.factory(
            node_id,
            args=["--node-id", node_id, "--rf", str(self.rf), *FAST, *self.args],
            env={"TRIBUTARY_CLUSTER_SECRET": SECRET},
            ready_timeout=60,
        )
        self.nodes[node_id] = node
        return node

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes.values()]

    def running(self) -> list[NodeProcess]:
        return [n for n in self.nodes.values() if n.running]

    # -- asking -----------------------------------------------------------------------------------

    def get(self, node: NodeProcess, path: str, **params: Any) -> httpx.Response:
        return httpx.get(node.url + path, params=params, timeout=30)

    def internal(self, node: NodeProcess, method: str, path: str, body: Any = None) -> Any:
        r = httpx.request(method, node.url + path, json=body, headers={"X-Tributary-Secret": SECRET}, timeout=10)
        r.raise_for_status()
        return r.json()

    def info(self, node: NodeProcess) -> dict[str, Any]:
        out: dict[str, Any] = self.get(node, "/v1/cluster").json()
        return out

    def count(self, node: NodeProcess, category: str, start: int, end: int, **kw: Any) -> dict[str, Any]:
        out: dict[str, Any] = self.get(node, "/v1/count", category=category, start=start, end=end, **kw).json()
        return out

    def answers(self, node: NodeProcess, category: str, start: int, end: int, k: int = 5) -> tuple[Any, ...]:
        c = self.get(node, "/v1/count", category=category, start=start, end=end).json()
        s = self.get(node, "/v1/sum", category=category, start=start, end=end).json()
        t = self.get(node, "/v1/topk", category=category, start=start, end=end, k=k).json()
        partial = c["partial"] or s["partial"] or t["partial"]
        top = [(p["producer_id"], p["count"]) for p in t["producers"]]
        return partial, (c["value"], s["value"]), top

    def check_exact(
        self,
        oracle: Oracle,
        ranges: Sequence[tuple[int, int]],
        nodes: Sequence[NodeProcess] | None = None,
        categories: Sequence[str] = ("c0", "c1", "c2"),
    ) -> None:
        for node in nodes or self.running():
            for start, end in ranges:
                for cat in categories:
                    partial, agg, top = self.answers(node, cat, start, end)
                    assert not partial, f"{node.name}: partial answer for {cat} [{start}, {end})"
                    assert agg == oracle.aggregate(cat, start, end), f"{node.name}: {cat} [{start}, {end})"
                    assert top == oracle.topk(cat, start, end, 5), f"{node.name}: top-k {cat} [{start}, {end})"

    def wait_serving(self, timeout: float = 60) -> float:
        def all_serving() -> bool:
            for node in self.running():
                h = self.get(node, "/health").json()
                if not h.get("serving"):
                    return False
            return True

        return poll("every node serving", all_serving, timeout)

    # -- convergence ------------------------------------------------------------------------------

    def digests(self, node: NodeProcess) -> dict[int, tuple[int, int]]:
        got = self.internal(node, "POST", "/internal/digests", {"shards": None, "level": "shard"})["digests"]
        return {int(s): (int(t), int(n)) for s, t, n in got}

    def converged(self) -> bool:
        """Every replica of every shard (per the first running node's map) holds the same batches,
        and no node holds a shard it does not own."""
        nodes = self.running()
        info = self.info(nodes[0])
        if info.get("in_transition"):
            return False
        by_id = {n.name: n for n in nodes}
        if any(self.info(n)["epoch"] != info["epoch"] for n in nodes):
            return False
        digests = {name: self.digests(node) for name, node in by_id.items()}
        owned: dict[str, set[int]] = {name: set() for name in by_id}
        for shard, replicas in enumerate(info["replicas"]):
            seen = {digests[r].get(shard, (0, 0)) for r in replicas if r in digests}
            if len(seen) > 1:
                return False
            for r in replicas:
                owned.setdefault(r, set()).add(shard)
        return all(set(d) <= owned.get(name, set()) for name, d in digests.items())

    def wait_converged(self, what: str, timeout: float = 60) -> float:
        took = poll(f"{what}: replicas converge", self.converged, timeout, interval=0.3)
        print(f"\n{what}: converged in {took:.2f} s")
        return took


def hour_ranges(t0: int, hours: int) -> list[tuple[int, int]]:
    """Whole and ragged ranges over ``hours`` hours from ``t0``."""
    return [
        (t0, t0 + hours * HOUR_NS),
        (t0 + 7_000_000_123, t0 + hours * HOUR_NS - 59_000_000_000),
        (t0 + HOUR_NS // 3, t0 + HOUR_NS),
    ]
