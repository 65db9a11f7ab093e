"""The manifest: atomic commits, pinned readers, orphans of a crash removed."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.errors import ManifestCorrupt
from storage.manifest import Manifest, Part


def _part(root: Path, pid: int, hour: int = 0) -> Part:
    rel = f"partitions/hour=x/events-{pid:08d}.parquet"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(b"data")
    return Part(pid, hour, 1, 0, 0, {"events": rel})


def test_commit_survives_reopen(tmp_path: Path) -> None:
    m = Manifest(tmp_path)
    p = _part(tmp_path, m.allocate_part_id())
    m.commit(add=[p], wal_seq=7)
    again = Manifest(tmp_path)
    assert again.state.parts == (p,)
    assert again.state.wal_seq == 7
    assert again.allocate_part_id() > p.id


def test_wal_position_never_goes_back(tmp_path: Path) -> None:
    m = Manifest(tmp_path)
    m.commit(wal_seq=10)
    m.commit(wal_seq=3)
    assert m.state.wal_seq == 10


def test_removed_files_wait_for_pinned_readers(tmp_path: Path) -> None:
    m = Manifest(tmp_path)
    a = _part(tmp_path, m.allocate_part_id())
    m.commit(add=[a])
    with m.pin() as state:
        b = _part(tmp_path, m.allocate_part_id())
        m.commit(add=[b], remove=[a.id])
        assert (tmp_path / a.files["events"]).exists(), "a reader still pins the old part"
        assert state.parts == (a,)
    assert not (tmp_path / a.files["events"]).exists()
    assert (tmp_path / b.files["events"]).exists()


def test_orphans_of_a_crash_are_removed(tmp_path: Path) -> None:
    m = Manifest(tmp_path)
    kept = _part(tmp_path, m.allocate_part_id())
    m.commit(add=[kept])
    orphan = _part(tmp_path, m.allocate_part_id())  # written, never committed
    removed = Manifest(tmp_path).remove_orphans()
    assert removed == [str(tmp_path / orphan.files["events"])]
    assert (tmp_path / kept.files["events"]).exists()


def test_a_torn_temporary_file_does_not_matter(tmp_path: Path) -> None:
    m = Manifest(tmp_path)
    m.commit(wal_seq=5)
    (tmp_path / "manifest.json.tmp").write_text('{"version": ')
    assert Manifest(tmp_path).state.wal_seq == 5


def test_corrupt_manifest_is_reported(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{nope")
    with pytest.raises(ManifestCorrupt):
        Manifest(tmp_path)
