"""Persisting in pieces: the same rows on disk, in order, committed once, whatever the piece size."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

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
from storage.manifest import Manifest
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


def _persist(root: Path, tables: list[pa.Table], piece_bytes: int) -> tuple[Manifest, int]:
    manifest = Manifest(root)
    store = PartitionStore(root, manifest)
    buffer = LiveBuffer()
    wal = Wal(root / "wal", WalConfig(fsync=False))
    keys = IdempotencyIndex(root / "idempotency.log")
    for seq, t in enumerate(tables, start=1):
        buffer.append(t, None, seq)
    persister = Persister(buffer, wal, store, manifest, keys, PersistConfig(piece_bytes=piece_bytes))
    try:
        assert persister.persist() == sum(t.num_rows for t in tables)
        assert buffer.total_rows == 0 and persister.persists == 1
    finally:
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
