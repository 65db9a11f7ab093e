"""Idempotency keys: first answer returned, conflicts refused, keys survive restarts, bounded."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ingest.errors import IdempotencyConflict
from ingest.idempotency import IdempotencyConfig, IdempotencyIndex, KeyRecord


def test_known_key_returns_first_answer_and_conflict_is_refused(tmp_path: Path) -> None:
    idx = IdempotencyIndex(tmp_path / "keys.log", clock=lambda: 100.0)
    assert idx.begin("k", 1) is None
    idx.finish(KeyRecord("k", 1, 10, 100.0))
    assert idx.begin("k", 1) == KeyRecord("k", 1, 10, 100.0)
    with pytest.raises(IdempotencyConflict):
        idx.begin("k", 2)


def test_aborted_key_can_be_retried(tmp_path: Path) -> None:
    idx = IdempotencyIndex(tmp_path / "keys.log", clock=lambda: 100.0)
    assert idx.begin("k", 1) is None
    idx.abort("k")
    assert idx.begin("k", 1) is None


def test_concurrent_same_key_waits_for_the_first(tmp_path: Path) -> None:
    idx = IdempotencyIndex(tmp_path / "keys.log", clock=lambda: 100.0)
    assert idx.begin("k", 1) is None
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(idx.begin("k", 1)))
    t.start()
    idx.finish(KeyRecord("k", 1, 3, 1.0))
    t.join(timeout=10)
    assert got == [KeyRecord("k", 1, 3, 1.0)]


def test_persisted_keys_survive_restart_and_expire(tmp_path: Path) -> None:
    now = [1000.0]
    path = tmp_path / "keys.log"
    idx = IdempotencyIndex(path, IdempotencyConfig(window_s=60), clock=lambda: now[0])
    idx.persist([KeyRecord("old", 1, 1, 900.0), KeyRecord("new", 2, 2, 990.0)])
    with open(path, "ab") as f:
        f.write(b'{"k": "torn')  # a crash mid-append
    idx2 = IdempotencyIndex(path, IdempotencyConfig(window_s=60), clock=lambda: now[0])
    assert idx2.begin("new", 2) == KeyRecord("new", 2, 2, 990.0)
    assert idx2.begin("old", 1) is None  # outside the window: forgotten


def test_memory_is_bounded(tmp_path: Path) -> None:
    idx = IdempotencyIndex(tmp_path / "keys.log", IdempotencyConfig(max_keys=100), clock=lambda: 5.0)
    for i in range(1000):
        idx.finish(KeyRecord(f"k{i}", i, 1, 5.0))
    assert len(idx) == 100
    assert idx.begin("k999", 999) is not None
