"""The node's background work: a persist never waits for a compaction in progress (issue 6)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from cluster.node import Node, NodeConfig
from ingest.persister import PersistConfig
from ingest.wal import WalConfig
from storage.schema import HOUR_NS
from tests.eventgen import random_events


class _HeldExtra:
    """A ``PartExtra`` that holds a merge up until the test releases it."""

    kind = "held"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def _hold(self, path: str) -> None:
        self.entered.set()
        assert self.release.wait(60), "the test never released the merge"
        Path(path).write_bytes(b"held")

    def build(self, con: duckdb.DuckDBPyConnection, rows_relation: str, path: str) -> None:
        self._hold(path)

    def merge(self, con: duckdb.DuckDBPyConnection, paths: Sequence[str], path: str) -> None:
        self._hold(path)


def _c0(batches: list[pa.Table]) -> int:
    return sum(pc.sum(pc.equal(b.column("category"), "c0")).as_py() or 0 for b in batches)


def test_a_persist_completes_while_a_compaction_is_held_up(tmp_path: Path) -> None:
    """The background merge thread starts compacting an hour and is held inside the merge; a
    persist meanwhile finishes, writes its part and commits it; once released, the merge
    commits too and every row is counted exactly once."""
    now = time.time_ns()
    hour = now - now % HOUR_NS - HOUR_NS  # a whole past hour: every batch lands in it
    rng = random.Random(6)
    cfg = NodeConfig(data_dir=tmp_path, wal=WalConfig(fsync=False), tick_s=0.01, compact_every_s=0.0)
    node = Node(cfg)
    held = _HeldExtra()
    node.merge_store.extras.append(held)  # merges only: persists write through node.store
    batches: list[pa.Table] = []
    try:
        for _ in range(4):  # compaction's min_parts: the background thread picks the hour up
            batches.append(random_events(rng, 200, start=hour, span=HOUR_NS))
            node.ingest(batches[-1])
            node.persist_now()
        assert held.entered.wait(30), "the background thread did not start compacting"

        batches.append(random_events(rng, 300, start=hour, span=HOUR_NS))
        node.ingest(batches[-1])
        persisted: list[int] = []
        writer = threading.Thread(target=lambda: persisted.append(node.persist_now()), daemon=True)
        writer.start()
        writer.join(30)
        assert not writer.is_alive(), "the persist waited for the compaction"
        assert persisted == [300]
        assert not held.release.is_set() and len(node.manifest.state.parts) == 5  # merge still running
        assert node.buffer.total_rows == 0

        held.release.set()
        deadline = time.monotonic() + 30
        while len(node.manifest.state.parts) != 2:  # the merged four and the fifth
            assert time.monotonic() < deadline, "the held compaction did not commit"
            time.sleep(0.01)
        assert sorted(p.rows for p in node.manifest.state.parts) == [300, 800]
        assert node.aggregate("c0", 0, now + HOUR_NS).value.count == _c0(batches)
    finally:
        held.release.set()
        node.close()


def test_a_full_buffer_is_persisted_at_once_not_at_the_next_tick(tmp_path: Path) -> None:
    """The persist thread wakes when the buffer reaches ``max_bytes``: with an hour between
    ticks, a full buffer is persisted all the same, and the node then stops without sleeping
    out the tick (a fixed poll left the persist thread idle up to a tick while the buffer was
    full: a fifth of its time, by py-spy, loading Arrow at 1M events/s)."""
    cfg = NodeConfig(
        data_dir=tmp_path, wal=WalConfig(fsync=False), persist=PersistConfig(max_bytes=1),
        tick_s=3600, compact_every_s=3600,
    )  # fmt: skip
    node = Node(cfg)
    closer = threading.Thread(target=node.close, daemon=True)
    try:
        node.ingest(random_events(random.Random(8), 500, start=time.time_ns() - HOUR_NS, span=HOUR_NS))
        # Woken when the persisted generation leaves the buffer (the wait ingest uses for room).
        assert node.buffer.wait_for_room(0, 0, 30), "the full buffer waited for the tick"
        assert sum(p.rows for p in node.manifest.state.parts) == 500
    finally:
        closer.start()
        closer.join(30)
    assert not closer.is_alive(), "the persist thread slept through the stop"
