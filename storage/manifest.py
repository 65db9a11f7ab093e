"""The manifest: the one list of which Parquet parts exist, and how far the WAL is persisted.

Every change is committed atomically (write a new file, fsync, rename over the old, fsync the
directory), so a crash at any moment leaves either the old list or the new one, never a mix: a
part written but not yet committed is an orphan that the next start deletes, and a part
removed by compaction disappears from the list in the same commit that adds its replacement.
Readers pin a state; files removed from the list are deleted only once no reader pins a state
that still names them.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from storage.errors import ManifestCorrupt

__all__ = ["Manifest", "ManifestState", "Part", "fsync_dir"]

MANIFEST_NAME = "manifest.json"


def fsync_dir(path: Path) -> None:
    """Make a rename or file creation inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Part:
    """One immutable set of files for one hour: raw events plus the rollups built from them.

    ``files`` maps a kind (``events``, ``rollup_minute``, ``rollup_producer``, ...) to a path
    relative to the data directory.
    """

    id: int
    hour: int
    rows: int
    min_ts: int
    max_ts: int
    files: dict[str, str]

    def path(self, root: Path, kind: str) -> str:
        return str(root / self.files[kind])


@dataclass(frozen=True)
class ManifestState:
    version: int = 0
    wal_seq: int = 0
    next_part: int = 1
    parts: tuple[Part, ...] = ()
    meta: dict[str, str] = field(default_factory=dict)

    def parts_between(self, start: int, end: int) -> list[Part]:
        """Parts whose hour overlaps ``[start, end)``."""
        from storage.schema import HOUR_NS

        return [p for p in self.parts if p.hour < end and p.hour + HOUR_NS > start]

    def hours(self) -> dict[int, list[Part]]:
        out: dict[int, list[Part]] = {}
        for p in self.parts:
            out.setdefault(p.hour, []).append(p)
        return out


class Manifest:
    """Thread-safe owner of ``DATA/manifest.json`` and of deleting unreferenced part files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._path = root / MANIFEST_NAME
        self._lock = threading.Lock()
        self._pins: dict[int, int] = {}
        self._garbage: list[tuple[int, list[str]]] = []  # (version that dropped them, paths)
        self._state = self._load()
        self._ids = self._state.next_part

    @property
    def state(self) -> ManifestState:
        return self._state

    def _load(self) -> ManifestState:
        if not self._path.exists():
            return ManifestState()
        try:
            raw = json.loads(self._path.read_text())
            parts = tuple(Part(**p) for p in raw["parts"])
            return ManifestState(raw["version"], raw["wal_seq"], raw["next_part"], parts, raw.get("meta", {}))
        except (ValueError, KeyError, TypeError) as e:
            raise ManifestCorrupt(f"{self._path}: {e}") from e

    def allocate_part_id(self) -> int:
        with self._lock:
            pid = self._ids
            self._ids += 1
            return pid

    def commit(
        self,
        add: Sequence[Part] = (),
        remove: Sequence[int] = (),
        wal_seq: int | None = None,
        meta: dict[str, str] | None = None,
    ) -> ManifestState:
        """Atomically add and remove parts (and advance the persisted WAL position).

        Returns the new state once it is durable on disk.
        """
        with self._lock:
            old = self._state
            gone = set(remove)
            dropped = [p for p in old.parts if p.id in gone]
            parts = tuple(p for p in old.parts if p.id not in gone) + tuple(add)
            new = replace(
                old,
                version=old.version + 1,
                wal_seq=old.wal_seq if wal_seq is None else max(wal_seq, old.wal_seq),
                next_part=max(self._ids, old.next_part),
                parts=parts,
                meta={**old.meta, **(meta or {})},
            )
            self._write(new)
            self._state = new
            # A part may be removed and added again with more files (``PartitionStore.complete``):
            # the files it keeps are not garbage.
            kept = {f for p in add for f in p.files.values()}
            gone_files = [str(self.root / f) for p in dropped for f in p.files.values() if f not in kept]
            if gone_files:
                self._garbage.append((new.version, gone_files))
        self.collect_garbage()
        return new

    def _write(self, state: ManifestState) -> None:
        body = {
            "version": state.version,
            "wal_seq": state.wal_seq,
            "next_part": state.next_part,
            "parts": [p.__dict__ for p in state.parts],
            "meta": state.meta,
        }
        tmp = self._path.with_suffix(".json.tmp")
        with open(tmp, "w") as f:
            json.dump(body, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)
        fsync_dir(self.root)

    @contextlib.contextmanager
    def pin(self) -> Iterator[ManifestState]:
        """Hold a state; none of its files is deleted until the block ends."""
        with self._lock:
            state = self._state
            self._pins[state.version] = self._pins.get(state.version, 0) + 1
        try:
            yield state
        finally:
            with self._lock:
                n = self._pins[state.version] - 1
                if n:
                    self._pins[state.version] = n
                else:
                    del self._pins[state.version]
            self.collect_garbage()

    def collect_garbage(self) -> None:
        """Delete files dropped by commits that no pinned state still references."""
        with self._lock:
            oldest_pin = min(self._pins, default=self._state.version)
            ready = [g for g in self._garbage if g[0] <= oldest_pin]
            self._garbage = [g for g in self._garbage if g[0] > oldest_pin]
        for _, paths in ready:
            for p in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)

    def remove_orphans(self, folder: str = "partitions") -> list[str]:
        """Delete part files the manifest does not name (left by a crash mid-write); returns them."""
        known = {f for p in self._state.parts for f in p.files.values()}
        removed: list[str] = []
        base = self.root / folder
        if not base.exists():
            return removed
        for path in base.rglob("*"):
            if path.is_file() and str(path.relative_to(self.root)) not in known:
                path.unlink()
                removed.append(str(path))
        for d in sorted(base.iterdir()) if base.exists() else []:
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        return removed
