"""Faults under load on a 3-node RF=2 cluster: ``kill -9`` of the node the client talks to,
and ``SIGSTOP`` of a replica for longer than the probe timeout. No acknowledged event is lost,
none is counted twice, answers during the outage are complete and exact, and the replicas
converge afterwards without an operator (the time it took is printed)."""

from __future__ import annotations

import random
import threading
import time

import pytest

from storage.schema import HOUR_NS
from tests.eventgen import T0, random_events
from tests.integration.cluster_support import ShardOracle, TestCluster, hour_ranges, send
from tests.support.process import NodeFactory, NodeProcess

pytestmark = pytest.mark.integration

A, B = T0, T0 + 4 * HOUR_NS  # phase A before the fault, phase B during it: disjoint hours


def _fault_during_ingest(cluster: TestCluster, events: object, at: int, fault: threading.Event, act: object) -> None:
    """Send ``events`` through n1 first (then n2, n3); call ``act`` once ``at`` events are in."""

    def progress(acked: int) -> None:
        if acked >= at and not fault.is_set():
            fault.set()
            act()  # type: ignore[operator]

    send(cluster.urls, events, on_progress=progress)  # type: ignore[arg-type]


def _timed_count(cluster: TestCluster, node: NodeProcess, start: int, end: int) -> float:
    t0 = time.monotonic()
    body = cluster.count(node, "c0", start, end)
    assert not body["partial"]
    return time.monotonic() - t0


def test_kill_9_mid_ingest_loses_nothing_and_converges(node_factory: NodeFactory) -> None:
    cluster = TestCluster(node_factory, 3, rf=2)  # fsync on: acknowledged means on disk
    oracle = ShardOracle()
    rng = random.Random(21)
    phase_a = random_events(rng, 12_000, start=A, span=2 * HOUR_NS, producers=2000)
    send(cluster.urls, phase_a)
    oracle.add(phase_a)

    n1, n2, n3 = cluster.nodes.values()
    phase_b = random_events(rng, 16_000, start=B, span=2 * HOUR_NS, producers=2000)
    killed = threading.Event()
    _fault_during_ingest(cluster, phase_b, 5000, killed, n1.kill)
    assert killed.is_set() and not n1.running
    oracle.add(phase_b)

    # During the outage: complete and exact from the survivors, for both phases.
    cluster.check_exact(oracle, [*hour_ranges(A, 2), *hour_ranges(B, 2)], nodes=[n2, n3])
    print(f"\ncount with n1 dead took {_timed_count(cluster, n2, A, B + 2 * HOUR_NS):.3f} s")

    n1.start().wait_ready(60)
    cluster.wait_converged("kill -9 of n1, restarted")
    cluster.check_exact(oracle, [(A, B + 2 * HOUR_NS), *hour_ranges(B, 2)])


def test_sigstop_longer_than_probe_timeout_then_sigcont(node_factory: NodeFactory) -> None:
    cluster = TestCluster(node_factory, 3, rf=2, args=["--no-fsync"])
    oracle = ShardOracle()
    rng = random.Random(22)
    phase_a = random_events(rng, 10_000, start=A, span=2 * HOUR_NS, producers=2000)
    send(cluster.urls, phase_a)
    oracle.add(phase_a)

    n1, n2, n3 = cluster.nodes.values()
    phase_b = random_events(rng, 14_000, start=B, span=2 * HOUR_NS, producers=2000)
    frozen = threading.Event()
    _fault_during_ingest(cluster, phase_b, 4000, frozen, n2.stop)
    oracle.add(phase_b)
    try:
        # n2 holds its sockets but answers nothing: reads skip it within the peer timeout.
        took = [_timed_count(cluster, n, A, B + 2 * HOUR_NS) for n in (n1, n3, n1, n3)]
        print(f"\ncounts with n2 frozen took {', '.join(f'{t:.3f}' for t in took)} s")
        cluster.check_exact(oracle, [*hour_ranges(A, 2), *hour_ranges(B, 2)], nodes=[n1, n3])
        time.sleep(1.0)  # stay frozen past the probe timeout for sure (a fault, not a wait for state)
    finally:
        n2.cont()
    cluster.wait_converged("SIGSTOP of n2, then SIGCONT")
    cluster.wait_serving()
    cluster.check_exact(oracle, [(A, B + 2 * HOUR_NS), *hour_ranges(B, 2)])
