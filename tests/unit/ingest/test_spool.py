"""The producer's disk spool: round trip, order, damage, cap, lock, restart."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.spool import SPOOL_MAGIC, Spool, SpoolLocked, decode_entry, encode_entry

ARROW = "application/vnd.apache.arrow.stream"


def put(spool: Spool, i: int, body: bytes | None = None) -> None:
    assert spool.put(f"key{i:04d}", ARROW, "zstd" if i % 2 else None, i + 1, body or f"body-{i}".encode())


def test_round_trip_keeps_key_type_encoding_events_and_body(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    assert spool.oldest() is None
    assert spool.put("abc123", "application/json", "zstd", 7, b"[1,2,3]")
    entry = spool.oldest()
    assert entry is not None
    assert (entry.idempotency_key, entry.content_type, entry.content_encoding, entry.events, entry.body) == (
        "abc123",
        "application/json",
        "zstd",
        7,
        b"[1,2,3]",
    )
    assert spool.pending == 1 and spool.pending_bytes == entry.size
    spool.remove(entry)
    assert spool.pending == 0 and spool.pending_bytes == 0
    assert spool.oldest() is None
    assert not list(tmp_path.glob("*.spool"))


def test_oldest_first_also_after_reopening(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(20):
        put(spool, i)
    seen = []
    for _ in range(5):
        entry = spool.oldest()
        assert entry is not None
        seen.append(entry.idempotency_key)
        spool.remove(entry)
    spool.close()

    spool = Spool(tmp_path)  # a restarted producer
    assert spool.pending == 15
    put(spool, 20)  # newer than everything already there
    while (entry := spool.oldest()) is not None:
        seen.append(entry.idempotency_key)
        spool.remove(entry)
    assert seen == [f"key{i:04d}" for i in range(21)]


def damage_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-3])


def damage_magic(path: Path) -> None:
    path.write_bytes(b"NOTSPOOL" + path.read_bytes()[8:])


def damage_empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize("damage", [damage_flip, damage_truncate, damage_magic, damage_empty])
def test_damaged_file_is_set_aside_and_skipped(tmp_path: Path, damage) -> None:
    spool = Spool(tmp_path)
    for i in range(3):
        put(spool, i, b"x" * 100)
    files = sorted(tmp_path.glob("*.spool"))
    damage(files[1])
    keys = []
    while (entry := spool.oldest()) is not None:
        keys.append(entry.idempotency_key)
        spool.remove(entry)
    assert keys == ["key0000", "key0002"]
    assert spool.corrupt == 1
    assert [p.name for p in (tmp_path / "corrupt").iterdir()] == [files[1].name]
    assert spool.pending == 0 and spool.pending_bytes == 0


def test_unfinished_write_is_set_aside_at_open(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    put(spool, 0)
    spool.close()
    (tmp_path / "00000000000000000001-000001-torn.spool.tmp").write_bytes(SPOOL_MAGIC + b"\x01")
    spool = Spool(tmp_path)
    assert spool.pending == 1
    assert (tmp_path / "corrupt" / "00000000000000000001-000001-torn.spool.tmp").exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_byte_cap_refuses_then_has_room_again(tmp_path: Path) -> None:
    one = len(encode_entry("key0000", ARROW, None, 1, b"x" * 1000))
    spool = Spool(tmp_path, max_bytes=3 * one)
    for i in range(3):
        assert spool.put(f"key{i:04d}", ARROW, None, 1, b"x" * 1000)
    assert not spool.put("key0003", ARROW, None, 1, b"x" * 1000)
    assert spool.pending == 3 and spool.pending_bytes == 3 * one
    assert sum(p.stat().st_size for p in tmp_path.glob("*.spool")) == 3 * one
    entry = spool.oldest()
    assert entry is not None
    spool.remove(entry)
    assert spool.put("key0003", ARROW, None, 1, b"x" * 1000)


def test_one_spool_per_directory(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    with pytest.raises(SpoolLocked):
        Spool(tmp_path)
    first.close()
    Spool(tmp_path).close()


def test_files_are_readable_by_a_fresh_decoder(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    put(spool, 5, b"payload")
    (path,) = tmp_path.glob("*.spool")
    assert decode_entry(path.read_bytes()) == ("key0005", ARROW, "zstd", 6, b"payload")
    assert os.path.basename(path).endswith("-key0005.spool")


entries = st.tuples(
    st.text(alphabet="0123456789abcdef", min_size=1, max_size=32),
    st.sampled_from([ARROW, "application/json"]),
    st.sampled_from([None, "zstd", "gzip"]),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=300),
)


@given(entries)
def test_encode_decode_round_trip(entry) -> None:
    assert decode_entry(encode_entry(*entry)) == entry


@settings(max_examples=300)
@given(entries, st.data())
def test_any_single_byte_change_is_detected(entry, data) -> None:
    raw = bytearray(encode_entry(*entry))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(ValueError):
        decode_entry(bytes(raw))
