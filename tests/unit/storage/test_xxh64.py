"""The numpy xxHash64 against the reference implementation (the ``xxhash`` package)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.schema import ShardHasher, shard_of
from storage.xxh64 import xxh64_strings


def reference(strings: list[str], seed: int = 0) -> list[int]:
    return [xxhash.xxh64_intdigest(s.encode(), seed=seed) for s in strings]


@settings(max_examples=200, deadline=None)
@given(
    strings=st.lists(st.text(max_size=140), max_size=60),
    seed=st.integers(0, 2**64 - 1),
)
def test_equals_the_reference_for_any_strings_and_seed(strings: list[str], seed: int) -> None:
    assert xxh64_strings(pa.array(strings, pa.string()), seed).tolist() == reference(strings, seed)


@pytest.mark.parametrize("length", [*range(0, 70), 95, 96, 97, 127, 128, 129, 255, 256, 257, 1000])
def test_every_length_class(length: int) -> None:
    """Each tail path (8-, 4-, 1-byte steps) and each stripe count, beside shorter strings."""
    strings = ["é" * (length // 2) + "x" * (length % 2), "a" * length, "", "short"]
    assert xxh64_strings(pa.array(strings)).tolist() == reference(strings)


@settings(max_examples=50, deadline=None)
@given(
    strings=st.lists(st.text(max_size=50), min_size=1, max_size=40),
    data=st.data(),
)
def test_slices_chunks_and_large_strings(strings: list[str], data: st.DataObject) -> None:
    lo = data.draw(st.integers(0, len(strings)))
    hi = data.draw(st.integers(lo, len(strings)))
    want = reference(strings[lo:hi])
    assert xxh64_strings(pa.array(strings).slice(lo, hi - lo)).tolist() == want
    assert xxh64_strings(pa.array(strings, pa.large_string()).slice(lo, hi - lo)).tolist() == want
    chunked = pa.chunked_array([pa.array(strings[lo:hi], pa.string()), pa.array(strings[:lo], pa.string())])
    assert xxh64_strings(chunked).tolist() == want + reference(strings[:lo])


def test_empty_and_null_inputs() -> None:
    assert xxh64_strings(pa.array([], pa.string())).dtype == np.uint64
    assert len(xxh64_strings(pa.chunked_array([], pa.string()))) == 0
    with pytest.raises(ValueError):
        xxh64_strings(pa.array(["a", None]))


@settings(max_examples=50, deadline=None)
@given(strings=st.lists(st.text(min_size=1, max_size=40), max_size=40), shards=st.integers(1, 1 << 16))
def test_shard_hasher_equals_shard_of(strings: list[str], shards: int) -> None:
    got = ShardHasher(shards)(pa.array(strings))
    assert got.type == pa.uint16()
    assert got.to_pylist() == [shard_of(s, shards) for s in strings]


def test_shard_counts_outside_uint16_are_refused() -> None:
    for shards in (0, (1 << 16) + 1):
        with pytest.raises(ValueError):
            ShardHasher(shards)
