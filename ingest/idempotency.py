"""Idempotency keys: a batch sent twice under one key is stored once.

A key is remembered with a fingerprint of its body and the answer first given. Keys travel in
the WAL record of their batch, so they survive a crash; when a batch is persisted its keys are
appended to ``DATA/idempotency.log`` (fsynced) before the WAL behind it is dropped, so they also
survive restarts after persisting. Memory is bounded: keys older than the window, and the
oldest beyond ``max_keys``, are forgotten.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from ingest.errors import IdempotencyConflict

__all__ = ["IdempotencyConfig", "IdempotencyIndex", "KeyRecord"]


@dataclass(frozen=True)
class IdempotencyConfig:
    window_s: float = 3600.0
    max_keys: int = 500_000


@dataclass(frozen=True)
class KeyRecord:
    key: str
    fingerprint: int
    accepted: int
    at: float  # wall-clock seconds when first accepted


class IdempotencyIndex:
    """Remembered keys plus the keys whose first request is still in flight."""

    def __init__(
        self, path: Path, config: IdempotencyConfig | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self.config = config or IdempotencyConfig()
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: OrderedDict[str, KeyRecord] = OrderedDict()
        self._inflight: dict[str, Future[KeyRecord | None]] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        horizon = self._clock() - self.config.window_s
        with open(self.path, "rb") as f:
            for line in f:
                try:
                    d = json.loads(line)
                    rec = KeyRecord(d["k"], d["f"], d["n"], d["t"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line after a crash; the WAL still holds its keys
                if rec.at >= horizon:
                    self._keys[rec.key] = rec
                    self._keys.move_to_end(rec.key)
        self._trim()
        self.rewrite()

    def _trim(self) -> None:
        horizon = self._clock() - self.config.window_s
        while self._keys:
            first = next(iter(self._keys.values()))
            if first.at < horizon or len(self._keys) > self.config.max_keys:
                self._keys.popitem(last=False)
            else:
                break

    def __len__(self) -> int:
        return len(self._keys)

    def begin(self, key: str, fingerprint: int, timeout: float = 60.0) -> KeyRecord | None:
        """Claim ``key`` for a new request; returns the first answer when the key is known.

        Raises IdempotencyConflict when the key was used with another body. When another request
        with the same key is in flight, waits for it. The caller must call ``finish`` or
        ``abort`` after a None return.
        """
        while True:
            with self._lock:
                rec = self._keys.get(key)
                if rec is not None:
                    if rec.fingerprint != fingerprint:
                        raise IdempotencyConflict(f"Idempotency-Key {key!r} was already used for a different batch")
                    return rec
                waiting = self._inflight.get(key)
                if waiting is None:
                    self._inflight[key] = Future()
                    return None
            waiting.result(timeout=timeout)  # then look again

    def finish(self, rec: KeyRecord) -> None:
        """Remember a durable batch's key (also used when replaying the WAL)."""
        with self._lock:
            self._keys[rec.key] = rec
            self._keys.move_to_end(rec.key)
            self._trim()
            fut = self._inflight.pop(rec.key, None)
        if fut is not None:
            fut.set_result(rec)

    def abort(self, key: str) -> None:
        """The request failed before its batch became durable: let a retry try again."""
        with self._lock:
            fut = self._inflight.pop(key, None)
        if fut is not None:
            fut.set_result(None)

    def persist(self, records: Iterable[KeyRecord]) -> None:
        """Append keys durably (called before the WAL records holding them are dropped)."""
        lines = [
            json.dumps({"k": r.key, "f": r.fingerprint, "n": r.accepted, "t": r.at}, separators=(",", ":"))
            for r in records
        ]
        if not lines:
            return
        with open(self.path, "ab") as f:
            f.write(("\n".join(lines) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())

    def rewrite(self) -> None:
        """Compact the key log to the keys still remembered (atomic replace)."""
        tmp = self.path.with_suffix(".tmp")
        with self._lock:
            recs = list(self._keys.values())
        with open(tmp, "wb") as f:
            for r in recs:
                f.write(json.dumps({"k": r.key, "f": r.fingerprint, "n": r.accepted, "t": r.at}).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
