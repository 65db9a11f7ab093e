"""Hints: rows a replica missed, kept durably by another node until the replica takes them.

A hint is one file, ``DATA/hints/<target>/<time>-<rand>.arrows``, holding an Arrow IPC stream
of stored rows. It is written to a temporary name, fsynced, renamed and the directory fsynced
before ``add`` returns, so a hint that counted towards a write's quorum survives ``kill -9`` of
the node holding it; it is deleted only after the target answered that the rows are durable
there. Replaying a hint twice is harmless: replicas store each slice once.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from pathlib import Path

import pyarrow as pa

from storage.manifest import fsync_dir
from storage.shipping import pack_ipc

__all__ = ["HintStore"]

_SUFFIX = ".arrows"


class HintStore:
    def __init__(self, root: Path) -> None:
        self.dir = root / "hints"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        for tmp in self.dir.rglob("*.tmp"):  # a crash mid-write: never acknowledged, drop it
            tmp.unlink()
        self._counts = {d.name: sum(1 for _ in d.glob("*" + _SUFFIX)) for d in self.dir.iterdir() if d.is_dir()}

    def add(self, target: str, rows: pa.Table) -> Path:
        return self.add_packed(target, pack_ipc(rows))

    def add_packed(self, target: str, body: bytes) -> Path:
        """Keep ``body`` (an Arrow IPC stream of stored rows) for ``target``; durable on return."""
        folder = self.dir / _safe(target)
        created = not folder.exists()
        folder.mkdir(exist_ok=True)
        if created:
            fsync_dir(self.dir)
        path = folder / f"{time.time_ns():020d}-{secrets.token_hex(4)}{_SUFFIX}"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(folder)
        with self._lock:
            self._counts[folder.name] = self._counts.get(folder.name, 0) + 1
        return path

    def counts(self) -> dict[str, int]:
        """Hints waiting, per target (targets with none are left out)."""
        with self._lock:
            return {t: n for t, n in self._counts.items() if n}

    def count_for(self, target: str) -> int:
        with self._lock:
            return self._counts.get(_safe(target), 0)

    def pending(self, target: str, limit: int = 64) -> list[Path]:
        """The oldest hints for ``target``."""
        folder = self.dir / _safe(target)
        if not folder.exists():
            return []
        return sorted(folder.glob("*" + _SUFFIX))[:limit]

    @staticmethod
    def read(path: Path) -> bytes:
        return path.read_bytes()

    def done(self, path: Path) -> None:
        """The target has the rows: forget the hint."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            with self._lock:
                name = path.parent.name
                self._counts[name] = max(0, self._counts.get(name, 1) - 1)


def _safe(node_id: str) -> str:
    """Node ids are operator-chosen; keep them from naming paths outside the hints folder."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in node_id)
    return cleaned.strip(".") or "_"
