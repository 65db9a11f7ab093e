"""Persisting in pieces: the same rows on disk, in order, committed once, whatever the piece size."""

from __future__ import annotations

import itertools
import random
import threading
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.buffer import Generation, LiveBuffer
from ingest.idempotency import IdempotencyIndex
from ingest.persister import PersistConfig, Persister
from ingest.run import Run
from ingest.wal import Wal, WalConfig
from storage.manifest import Manifest, Part
from storage.partition import PartitionStore
from storage.schema import HOUR_NS, STORED_SCHEMA
from tests.eventgen import random_events, stored


def _runs(sizes: list[int], seed: int) -> list[Run]:
    rng = random.Random(seed)
    return [Run.build(stored(random_events(rng, n, span=3 * HOUR_NS), batch_id=i)) for i, n in enumerate(sizes)]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=12),
    limit=st.integers(1, 20_000),
    seed=st.integers(0, 1000),
)
def test_pieces_cover_the_runs_in_order_within_the_limit(sizes: list[int], limit: int, seed: int) -> None:
    g = Generation(runs=_runs(sizes, seed))
    g.rows, g.nbytes = sum(r.num_rows for r in g.runs), sum(r.nbytes for r in g.runs)
    pieces = g.pieces(limit)
    assert [r for p in pieces for r in p.runs] == g.runs
    for p in pieces:
        assert p.runs and p.rows == sum(r.num_rows for r in p.runs) and p.nbytes == sum(r.nbytes for r in p.runs)
        assert p.nbytes <= limit or len(p.runs) == 1  # a run bigger than the limit is a piece alone
    for a, b in itertools.pairwise(pieces):
        assert a.nbytes + b.runs[0].nbytes > limit  # a piece is cut only when the next run does not fit


def _node_parts(
    root: Path, store_cls: type[PartitionStore], config: PersistConfig, tables: list[pa.Table]
) -> tuple[Manifest, PartitionStore, LiveBuffer, Persister]:
    """A persister over ``tables`` buffered (not yet persisted), writing through ``store_cls``."""
    manifest = Manifest(root)
    store = store_cls(root, manifest)
    buffer = LiveBuffer()
    wal = Wal(root / "wal", WalConfig(fsync=False))
    keys = IdempotencyIndex(root / "idempotency.log")
    for seq, t in enumerate(tables, start=1):
        buffer.append(t, None, seq)
    return manifest, store, buffer, Persister(buffer, wal, store, manifest, keys, config)


def _persist(root: Path, tables: list[pa.Table], piece_bytes: int) -> tuple[Manifest, int]:
    manifest, store, buffer, persister = _node_parts(
        root, PartitionStore, PersistConfig(piece_bytes=piece_bytes), tables
    )
    try:
        assert persister.persist() == sum(t.num_rows for t in tables)
        assert buffer.total_rows == 0 and persister.persists == 1
    finally:
        persister.close()
        store.close()
    return manifest, len(manifest.state.parts)


def _rows_on_disk(root: Path, manifest: Manifest) -> list[tuple[object, ...]]:
    rows = []
    for part in manifest.state.parts:
        events = pq.read_table(part.path(root, "events"))
        keys = list(zip(events["category"].to_pylist(), events["timestamp"].to_pylist(), strict=True))
        assert keys == sorted(keys, key=lambda k: (k[0].encode(), k[1]))  # each part in the query path's order
        rows += [tuple(r.values()) for r in events.select(STORED_SCHEMA.names).to_pylist()]
    return sorted(rows)


@pytest.mark.parametrize("piece_bytes", [1, 20_000])
def test_a_generation_persisted_in_pieces_stores_the_same_rows(tmp_path: Path, piece_bytes: int) -> None:
    """Small pieces make more parts (each sorted, each hour's rows split between them) but the
    same rows, committed in the same one manifest commit as a whole-generation persist."""
    rng = random.Random(7)
    tables = [stored(random_events(rng, n, span=3 * HOUR_NS), batch_id=i) for i, n in enumerate([300, 50, 700, 200])]
    whole, whole_parts = _persist(tmp_path / "whole", tables, 1 << 40)
    pieced, pieced_parts = _persist(tmp_path / "pieced", tables, piece_bytes)
    assert _rows_on_disk(tmp_path / "pieced", pieced) == _rows_on_disk(tmp_path / "whole", whole)
    assert whole_parts == 3  # one per hour
    assert pieced_parts > whole_parts
    assert pieced.state.wal_seq == whole.state.wal_seq == len(tables)


def test_a_worker_share_sizes_the_pieces_within_the_bounds() -> None:
    config = PersistConfig(piece_bytes=16 << 20, min_piece_bytes=4 << 20, workers=2)
    assert config.piece_limit(20 << 20) == 10 << 20  # half a generation each
    assert config.piece_limit(64 << 20) == 16 << 20  # never above piece_bytes
    assert config.piece_limit(2 << 20) == 4 << 20  # never below min_piece_bytes: one piece
    one = PersistConfig(piece_bytes=16 << 20, workers=1)
    assert one.piece_limit(20 << 20) == 16 << 20  # one worker: pieces as big as allowed


class _MeetingStore(PartitionStore):
    """Each write waits until two writes are under way at once (or fails after 30 s)."""

    meeting: ClassVar[threading.Barrier] = threading.Barrier(2, timeout=30)

    def write(self, rows: pa.Table, by_category: object = None) -> list[Part]:  # type: ignore[override]
        self.meeting.wait()
        return super().write(rows, by_category)  # type: ignore[arg-type]


def test_the_pieces_of_a_generation_are_written_at_the_same_time(tmp_path: Path) -> None:
    rng = random.Random(3)
    tables = [stored(random_events(rng, 400, span=HOUR_NS), batch_id=i) for i in range(2)]
    config = PersistConfig(piece_bytes=tables[0].nbytes, min_piece_bytes=1, workers=2)
    manifest, store, buffer, persister = _node_parts(tmp_path, _MeetingStore, config, tables)
    try:
        # Written one after the other, the first write would wait at the barrier alone and fail.
        assert persister.persist() == 800
        assert len(manifest.state.parts) == 2 and manifest.state.wal_seq == 2 and buffer.total_rows == 0
    finally:
        persister.close()
        store.close()


class _FailingStore(PartitionStore):
    """The write of the piece holding batch 1 fails while ``failing`` is set."""

    failing: ClassVar[bool] = True
    finished: ClassVar[list[int]] = []

    def write(self, rows: pa.Table, by_category: object = None) -> list[Part]:  # type: ignore[override]
        batches = set(rows["batch_id"].to_pylist())
        if self.failing and 1 in batches:
            raise OSError("disk full")
        parts = super().write(rows, by_category)  # type: ignore[arg-type]
        self.finished.extend(batches)
        return parts


def test_a_failed_piece_fails_the_persist_and_commits_nothing(tmp_path: Path) -> None:
    """The parts written beside it are not committed (orphans); the rows stay in the buffer and
    the next persist commits them all, once."""
    _FailingStore.failing, _FailingStore.finished = True, []
    rng = random.Random(5)
    tables = [stored(random_events(rng, 300, span=2 * HOUR_NS), batch_id=i) for i in range(4)]
    config = PersistConfig(piece_bytes=tables[0].nbytes, min_piece_bytes=1, workers=2)
    manifest, store, buffer, persister = _node_parts(tmp_path, _FailingStore, config, tables)
    try:
        with pytest.raises(OSError, match="disk full"):
            persister.persist()
        # The piece written beside the failed one ran to its end before the persist gave up;
        # the pieces after them were not started.
        assert _FailingStore.finished == [0]
        assert not manifest.state.parts
        assert buffer.total_rows == 1200 and manifest.state.wal_seq == 0
        _FailingStore.failing = False
        assert persister.persist() == 1200
        assert buffer.total_rows == 0 and manifest.state.wal_seq == 4
        written = [pq.read_table(p.path(tmp_path, "events")) for p in manifest.state.parts]
        assert sorted(b for t in written for b in t["batch_id"].to_pylist()) == sorted(
            b for t in tables for b in t["batch_id"].to_pylist()
        )
    finally:
        persister.close()
        store.close()
