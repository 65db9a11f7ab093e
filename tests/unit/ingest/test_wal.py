"""The WAL: group commit, checksums, torn tails cut on recovery, segments dropped behind persists."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pytest

from ingest.errors import WalCorrupt
from ingest.wal import Wal, WalConfig


def _write(directory: Path, payloads: list[bytes], **kw: object) -> Wal:
    wal = Wal(directory, WalConfig(**kw))  # type: ignore[arg-type]
    list(wal.replay())
    wal.start()
    for p in payloads:
        wal.append(p).result(timeout=10)
    return wal


def test_records_come_back_in_order_after_reopen(tmp_path: Path) -> None:
    payloads = [f"record {i}".encode() * (i + 1) for i in range(50)]
    _write(tmp_path, payloads).close()
    wal = Wal(tmp_path)
    got = list(wal.replay())
    assert [r.payload for r in got] == payloads
    assert [r.seq for r in got] == list(range(1, 51))
    assert [r.payload for r in Wal(tmp_path).replay(after_seq=45)] == payloads[45:]


def test_group_commit_uses_fewer_fsyncs_than_records(tmp_path: Path) -> None:
    wal = Wal(tmp_path)
    list(wal.replay())
    seen: list[int] = []
    wal._on_durable = lambda seq, ctx: seen.append(seq)
    wal.start()
    futures = []
    barrier = threading.Barrier(8)

    def writer() -> None:
        barrier.wait()
        futures.extend(wal.append(b"x" * 100) for _ in range(50))

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = sorted(f.result(timeout=10) for f in futures)
    wal.close()
    assert seqs == list(range(1, 401))
    assert seen == list(range(1, 401)), "on_durable runs in sequence order"
    assert wal.fsyncs < 400


@pytest.mark.parametrize("cut", [1, 5, 17, 30])
def test_torn_tail_is_cut_not_fatal(tmp_path: Path, cut: int) -> None:
    _write(tmp_path, [b"a" * 10, b"b" * 10, b"c" * 10]).close()
    seg = sorted(tmp_path.glob("*.wal"))[-1]
    data = seg.read_bytes()
    seg.write_bytes(data[: len(data) - cut])
    wal = Wal(tmp_path)
    got = [r.payload for r in wal.replay()]
    assert got in ([b"a" * 10, b"b" * 10], [b"a" * 10])
    wal.start()
    wal.append(b"d").result(timeout=10)
    wal.close()
    assert [r.payload for r in Wal(tmp_path).replay()] == [*got, b"d"]


def test_flipped_bit_in_the_tail_record_is_cut(tmp_path: Path) -> None:
    _write(tmp_path, [b"first", b"second"]).close()
    seg = sorted(tmp_path.glob("*.wal"))[-1]
    data = bytearray(seg.read_bytes())
    data[-2] ^= 0x01
    seg.write_bytes(bytes(data))
    assert [r.payload for r in Wal(tmp_path).replay()] == [b"first"]


def test_corruption_in_an_older_segment_is_reported(tmp_path: Path) -> None:
    wal = _write(tmp_path, [b"one", b"two"])
    wal.roll()
    wal.append(b"three").result(timeout=10)
    wal.close()
    first = sorted(tmp_path.glob("*.wal"))[0]
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(WalCorrupt):
        list(Wal(tmp_path).replay())


def test_drop_through_keeps_segments_with_later_records(tmp_path: Path) -> None:
    wal = _write(tmp_path, [b"1", b"2"])
    wal.roll()
    wal.append(b"3").result(timeout=10)
    wal.roll()
    wal.append(b"4").result(timeout=10)
    assert len(list(tmp_path.glob("*.wal"))) == 3
    assert wal.drop_through(1) == 0  # segment 1 also holds seq 2
    assert wal.drop_through(2) == 1
    assert wal.drop_through(3) == 1  # the newest segment stays while it holds seq 4
    assert len(list(tmp_path.glob("*.wal"))) == 1
    wal.close()
    assert [r.payload for r in Wal(tmp_path).replay(after_seq=4)] == []


def test_a_fully_persisted_log_leaves_no_segment_and_goes_on(tmp_path: Path) -> None:
    """Once every record written is persisted, the active segment is deleted too (an idle node
    keeps no dead log on disk); the next record opens a new segment and survives a reopen."""
    wal = _write(tmp_path, [b"1", b"2"])
    assert wal.drop_through(2) == 1
    assert list(tmp_path.glob("*.wal")) == []
    assert wal.append(pa.py_buffer(b"three")).result(timeout=10) == 3  # an Arrow buffer, not copied
    wal.close()
    reopened = Wal(tmp_path)
    assert [(r.seq, r.payload) for r in reopened.replay(after_seq=2)] == [(3, b"three")]
    reopened.start()
    assert reopened.append(b"4").result(timeout=10) == 4
    reopened.close()


def test_segments_roll_by_size(tmp_path: Path) -> None:
    wal = _write(tmp_path, [b"z" * 1000 for _ in range(10)], segment_bytes=2500)
    wal.close()
    assert len(list(tmp_path.glob("*.wal"))) >= 3
    assert len(list(Wal(tmp_path).replay())) == 10
