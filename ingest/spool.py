"""The producer client's disk spool: encoded batches that could not be delivered wait here.

A spooled batch keeps the body, content type and Idempotency-Key it was formed with, so a replay
of a batch the server had in fact committed is answered ``duplicate: true`` and stored once.
Like the client, this module imports nothing of the server.

Guarantees:

- ``put`` returns only after the file and its directory entry are fsynced; a crash during
  ``put`` leaves a ``*.tmp`` file, which the next ``Spool`` on the directory sets aside.
- Files are replayed oldest first: names carry a strictly increasing nanosecond stamp.
- A file whose magic, version, length or xxh64 checksum is wrong is moved to ``corrupt/`` and
  skipped; reading the spool never raises because of its content.
- One ``Spool`` per directory at a time (``flock`` on ``.lock``); the lock dies with the
  process, so a producer restarted after ``kill -9`` takes over its predecessor's spool.
- The files together never exceed ``max_bytes``; ``put`` answers ``False`` instead.

File layout (little endian)::

    header  magic "TRBSPOOL" | u16 version | u16 flags (0) | u32 events | u64 payload length
            | u64 xxh64(header without this field + payload)
    payload u16 len + Idempotency-Key | u16 len + Content-Type | u16 len + Content-Encoding
            | body (the encoded batch, exactly as sent on the wire)
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import xxhash

__all__ = ["SPOOL_MAGIC", "SPOOL_VERSION", "Spool", "SpoolEntry", "SpoolLocked"]

log = logging.getLogger("tributary.client")

SPOOL_MAGIC = b"TRBSPOOL"
SPOOL_VERSION = 1
_HEADER = struct.Struct("<8sHHIQQ")
_LEN = struct.Struct("<H")
_SUFFIX = ".spool"
_CORRUPT_DIR = "corrupt"


class SpoolLocked(RuntimeError):
    """Another producer (in this or another process) already uses this spool directory. Give each
    producer its own ``spool_dir``, or close the other one first."""


@dataclass(frozen=True)
class SpoolEntry:
    """One spooled batch, read back and verified."""

    path: Path
    idempotency_key: str
    content_type: str
    content_encoding: str | None
    events: int
    body: bytes
    size: int


def encode_entry(key: str, content_type: str, content_encoding: str | None, events: int, body: bytes) -> bytes:
    """The bytes of one spool file (header + payload)."""
    fields = b"".join(
        _LEN.pack(len(b)) + b for b in (key.encode(), content_type.encode(), (content_encoding or "").encode())
    )
    payload = fields + body
    prefix = _HEADER.pack(SPOOL_MAGIC, SPOOL_VERSION, 0, events, len(payload), 0)[:-8]
    digest = xxhash.xxh64_intdigest(prefix + payload)
    return prefix + struct.pack("<Q", digest) + payload


def decode_entry(data: bytes) -> tuple[str, str, str | None, int, bytes]:
    """``(key, content_type, content_encoding, events, body)``; ValueError on any damage."""
    if len(data) < _HEADER.size:
        raise ValueError("shorter than the header")
    magic, version, _flags, events, length, digest = _HEADER.unpack_from(data)
    if magic != SPOOL_MAGIC:
        raise ValueError("bad magic")
    if version != SPOOL_VERSION:
        raise ValueError(f"unknown version {version}")
    payload = data[_HEADER.size :]
    if len(payload) != length:
        raise ValueError(f"payload is {len(payload)} bytes, header says {length}")
    if xxhash.xxh64_intdigest(data[: _HEADER.size - 8] + payload) != digest:
        raise ValueError("checksum mismatch")
    fields: list[str] = []
    pos = 0
    for _ in range(3):
        (n,) = _LEN.unpack_from(payload, pos)
        fields.append(payload[pos + 2 : pos + 2 + n].decode())
        pos += 2 + n
    return fields[0], fields[1], fields[2] or None, events, payload[pos:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """A directory of spooled batches, owned by one producer at a time.

    Thread-safe; the producer's sender thread is its only writer in practice.
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int = 1 << 30, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._fsync = fsync
        self._lock = threading.Lock()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise SpoolLocked(f"spool directory {self.directory} is in use by another producer") from None
        self.corrupt = 0
        self._files: deque[tuple[Path, int]] = deque()
        self._bytes = 0
        self._last_stamp = 0
        self._seq = 0
        for tmp in sorted(self.directory.glob("*.tmp")):
            # A crash during put: the batch was still in memory then, and was lost with it.
            self._set_aside(tmp, "unfinished write")
        for path in sorted(self.directory.glob("*" + _SUFFIX)):
            size = path.stat().st_size
            self._files.append((path, size))
            self._bytes += size
            self._last_stamp = max(self._last_stamp, _stamp_of(path))

    @property
    def pending(self) -> int:
        """Spooled batches not yet removed (corrupt ones not counted)."""
        return len(self._files)

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def put(self, key: str, content_type: str, content_encoding: str | None, events: int, body: bytes) -> bool:
        """Write one batch durably; ``False`` (nothing written) when it would pass ``max_bytes``."""
        size = (
            _HEADER.size + 6 + len(key.encode()) + len(content_type.encode()) + len((content_encoding or "").encode())
        )
        if self._bytes + size + len(body) > self.max_bytes:
            return False  # checked before encoding: a full spool is asked often while offline
        data = encode_entry(key, content_type, content_encoding, events, body)
        with self._lock:
            if self._bytes + len(data) > self.max_bytes:
                return False
            self._last_stamp = max(time.time_ns(), self._last_stamp + 1)
            self._seq += 1
            name = f"{self._last_stamp:020d}-{self._seq:06d}-{key}{_SUFFIX}"
            final = self.directory / name
            tmp = self.directory / (name + ".tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                if self._fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, final)
            if self._fsync:
                _fsync_dir(self.directory)
            self._files.append((final, len(data)))
            self._bytes += len(data)
            return True

    def oldest(self) -> SpoolEntry | None:
        """The oldest intact batch, or None when the spool is empty. Damaged files met on the way
        are moved to ``corrupt/`` and counted in ``corrupt``."""
        with self._lock:
            while self._files:
                path, size = self._files[0]
                try:
                    data = path.read_bytes()
                    key, ctype, cenc, events, body = decode_entry(data)
                except FileNotFoundError:
                    self._forget_head()
                    continue
                except (OSError, ValueError, UnicodeDecodeError, struct.error) as e:
                    self._forget_head()
                    self.corrupt += 1
                    self._set_aside(path, str(e))
                    continue
                return SpoolEntry(path, key, ctype, cenc, events, body, size)
            return None

    def remove(self, entry: SpoolEntry) -> None:
        """Forget a batch once the server acknowledged (or finally refused) it."""
        with self._lock:
            with contextlib.suppress(FileNotFoundError):
                entry.path.unlink()
            if self._fsync:
                # Without this a power cut could resurrect the file; the replay would then be
                # answered duplicate=true, so this is tidiness rather than correctness.
                _fsync_dir(self.directory)
            for i, (path, size) in enumerate(self._files):
                if path == entry.path:
                    del self._files[i]
                    self._bytes -= size
                    break

    def close(self) -> None:
        """Release the directory lock; the files stay for the next producer."""
        with self._lock:
            if self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = None

    def _forget_head(self) -> None:
        _path, size = self._files.popleft()
        self._bytes -= size

    def _set_aside(self, path: Path, why: str) -> None:
        aside = self.directory / _CORRUPT_DIR
        log.warning("spool file %s is damaged (%s); moved to %s", path.name, why, aside)
        try:
            aside.mkdir(exist_ok=True)
            os.replace(path, aside / path.name)
        except OSError as e:
            log.warning("could not move %s aside: %s", path, e)


def _stamp_of(path: Path) -> int:
    try:
        return int(path.name.split("-", 1)[0])
    except ValueError:
        return 0
