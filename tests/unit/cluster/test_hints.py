"""Hints are durable files: they survive a reopen, torn writes are dropped, delivery forgets."""

from __future__ import annotations

import random
from pathlib import Path

from cluster.hints import HintStore
from storage.shipping import ARROW_STREAM, unpack
from tests.eventgen import random_events, stored


def test_hints_survive_a_restart_and_are_forgotten_once_delivered(tmp_path: Path) -> None:
    rows = stored(random_events(random.Random(1), 50), batch_id=3)
    store = HintStore(tmp_path)
    store.add("n2", rows)
    store.add("n2", rows.slice(0, 10))
    store.add("n3", rows.slice(0, 1))
    (tmp_path / "hints" / "n2" / "torn.tmp").write_bytes(b"half a hint")  # a crash mid-write

    again = HintStore(tmp_path)
    assert again.counts() == {"n2": 2, "n3": 1}
    assert not list((tmp_path / "hints").rglob("*.tmp"))
    pending = again.pending("n2")
    assert [unpack(again.read(p), ARROW_STREAM).num_rows for p in pending] == [50, 10]  # oldest first
    assert unpack(again.read(pending[0]), ARROW_STREAM).equals(rows)
    for p in pending:
        again.done(p)
    assert again.counts() == {"n3": 1} and again.count_for("n2") == 0
    assert HintStore(tmp_path).counts() == {"n3": 1}


def test_odd_node_ids_stay_inside_the_hints_folder(tmp_path: Path) -> None:
    store = HintStore(tmp_path)
    path = store.add("../../etc", stored(random_events(random.Random(2), 1)))
    assert (tmp_path / "hints") in path.parents
