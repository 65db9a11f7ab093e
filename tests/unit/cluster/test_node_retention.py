"""Retention wired into the node: the background loop drops expired hours on its own."""

from __future__ import annotations

import random
import time
from pathlib import Path

from cluster.node import Node, NodeConfig
from ingest.wal import WalConfig
from storage.retention import RetentionConfig
from storage.schema import HOUR_NS
from tests.eventgen import random_events


def test_a_node_drops_old_hours_in_its_background_loop(tmp_path: Path) -> None:
    """Old and recent events through the node's write path; after persisting, the background
    loop drops the old hours and queries see only what is within retention."""
    now = time.time_ns()
    this_hour = now - now % HOUR_NS
    old = random_events(random.Random(1), 300, start=this_hour - 6 * HOUR_NS, span=2 * HOUR_NS)
    new = random_events(random.Random(2), 200, start=this_hour - HOUR_NS, span=HOUR_NS)
    cfg = NodeConfig(
        data_dir=tmp_path,
        wal=WalConfig(fsync=False),
        retention=RetentionConfig(max_age_ns=3 * HOUR_NS, every_s=0.0),
        tick_s=0.02,
    )
    node = Node(cfg)
    try:
        node.ingest(old)
        node.ingest(new)
        node.persist_now()
        deadline = time.monotonic() + 20
        # The counter moves after the commit that drops the parts (and its file deletions): wait for both.
        while node.retention.hours_dropped < 2 or any(
            p.hour < this_hour - 4 * HOUR_NS for p in node.manifest.state.parts
        ):
            assert time.monotonic() < deadline, "retention did not drop the old hours"
            time.sleep(0.02)
        total = node.aggregate("c0", 0, now + HOUR_NS).value
        want_new = sum(1 for c in new.column("category").to_pylist() if c == "c0")
        assert total.count == want_new  # type: ignore[attr-defined]
        assert node.aggregate("c0", 0, this_hour - 3 * HOUR_NS).value.count == 0  # type: ignore[attr-defined]
        assert node.retention.hours_dropped == 2
    finally:
        node.close()
