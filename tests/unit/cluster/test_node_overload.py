"""A write that finds the live buffer full waits briefly for a persist to make room instead of
being refused at once; only a few wait, and past the wait it is a 503 (Overloaded)."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from cluster.node import Node, NodeConfig
from ingest.errors import Overloaded
from ingest.ingestor import IngestConfig
from ingest.persister import PersistConfig
from ingest.wal import WalConfig
from tests.eventgen import random_events


def _node(tmp_path: Path, wait_s: float) -> Node:
    return Node(
        NodeConfig(
            data_dir=tmp_path,
            wal=WalConfig(fsync=False),
            ingest=IngestConfig(max_buffer_bytes=200_000, overload_wait_s=wait_s, overload_waiters=1),
            persist=PersistConfig(max_bytes=1 << 30, max_age_s=3600),  # persists only when told
        )
    )


def _fill(node: Node, rng: random.Random) -> int:
    """Ingest until the buffer is nearly full; returns the events stored."""
    while node.buffer.total_bytes < 150_000:
        node.ingest(random_events(rng, 500))
    return node.ingestor.events_total


def test_a_write_waits_for_the_persist_that_makes_room(tmp_path: Path) -> None:
    node = _node(tmp_path, wait_s=60)
    rng = random.Random(1)
    stored = _fill(node, rng)
    done: list[int] = []
    writer = threading.Thread(target=lambda: done.append(node.ingest(random_events(rng, 1000)).accepted))
    writer.start()
    deadline = time.monotonic() + 60
    while node.ingestor._waiters._value:  # type: ignore[attr-defined]  # the one slot is taken while it waits
        assert time.monotonic() < deadline, "the writer never waited"
        time.sleep(0.01)
    assert writer.is_alive() and not done, "the write waits while the buffer is full"
    node.persist_now()
    writer.join(timeout=60)
    assert done == [1000] and node.ingestor.events_total == stored + 1000
    node.close()


def test_past_the_wait_a_write_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    node = _node(tmp_path, wait_s=0.05)
    rng = random.Random(2)
    stored = _fill(node, rng)
    with pytest.raises(Overloaded):
        node.ingest(random_events(rng, 1000))
    assert node.ingestor.events_total == stored
    node.close()
