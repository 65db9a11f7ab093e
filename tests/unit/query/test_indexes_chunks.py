"""Top-k reads a long edge in chunks and folds the ids into counts as it goes: the answers do
not depend on the chunk size (here down to a few rows, so every edge spans many chunks)."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pytest

import query.indexes
from tests.unit.query.test_rollup_cache import Node, events


@pytest.mark.parametrize("chunk_rows", [3, 64])
def test_top_k_in_small_chunks_equals_the_oracle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_rows: int
) -> None:
    monkeypatch.setattr(query.indexes, "_CHUNK_ROWS", chunk_rows)
    rng = random.Random(chunk_rows)
    node = Node(tmp_path)
    for i in range(3):
        node.add(events(rng, 900), persist=i != 2)
    stamps = pa.concat_tables(node.oracle.tables)["timestamp"].to_pylist()
    node.check(rng, n=80, stamps=stamps)
    node.close()
