"""A Tributary server under test: one ``tributary serve`` subprocess and its memory, sampled.

``ServerProcess`` starts the server on a free loopback port with its own data directory, waits
for ``GET /ready`` (polled, with a deadline), and stops it with SIGTERM (SIGKILL after a grace
period). ``RssSampler`` records the resident set of the server's whole process tree every
``interval_s`` and keeps the peak per named phase (``ingest``, ``queries``, ...), so the figure is
the server's own, never the bench's.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx
import psutil

__all__ = [
    "DEFAULT_COMMAND",
    "RssSampler",
    "ServerError",
    "ServerProcess",
    "disk_usage",
    "node_stats",
    "wait_compacted",
    "wait_persisted",
]

# The venv's console script, so the pid we watch is the server itself and not a `uv run` wrapper.
DEFAULT_COMMAND = f"{Path(sys.executable).parent / 'tributary'} serve --host 127.0.0.1 --port {{port}} --data {{data}}"


class ServerError(RuntimeError):
    """The server did not start or died; its log file (printed in the message) says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bytes_by_kind(data_dir: Path) -> dict[str, int]:
    """Bytes of a node's Parquet files under ``data_dir/partitions`` by kind (the file name
    before ``-<part>``: events, rollup_minute, rollup_producer, sketch_v2, batches)."""
    out: dict[str, int] = {}
    for f in (data_dir / "partitions").rglob("*.parquet"):
        kind = f.name.rsplit("-", 1)[0]
        out[kind] = out.get(kind, 0) + f.stat().st_size
    return out


def disk_usage(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (like ``du -s --block-size=1``)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            # A file the server removes while we walk is simply not counted.
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def node_stats(url: str) -> dict[str, object] | None:
    """A node's ``GET /v1/stats``, or None if it does not answer 200."""
    try:
        response = httpx.get(f"{url}/v1/stats", timeout=10.0)
    except httpx.HTTPError:
        return None
    return dict(response.json()) if response.status_code == 200 else None


def wait_persisted(urls: list[str], timeout_s: float = 300.0) -> float | None:
    """Seconds until every node at ``urls`` has persisted all it acknowledged (an empty live
    buffer): "loaded" means on disk, as the peers' loads are; None if that takes over
    ``timeout_s``."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        with contextlib.suppress(httpx.HTTPError):
            if all(httpx.get(f"{u}/v1/stats", timeout=10.0).json()["buffer_rows"] == 0 for u in urls):
                return round(time.perf_counter() - t0, 1)
        time.sleep(0.2)
    return None


def wait_compacted(urls: list[str], quiet_s: float = 35.0, timeout_s: float = 420.0) -> float | None:
    """Seconds until the background compaction of every node at ``urls`` has settled: none has
    an hour left to merge (``compaction_pending_hours`` of ``/v1/stats`` is 0: an hour waiting
    to go quiet counts, see ``storage/compaction.py``). A node that does not report it is
    settled once its part count has not changed for ``quiet_s`` (longer than the compactor's
    30 s period). None if that takes over ``timeout_s``. Disk and queries measured then see what
    a node keeps for the data at rest, not a persist's pieces."""
    t0 = time.perf_counter()
    last: list[int] | None = None
    since = t0
    while time.perf_counter() - t0 < timeout_s:
        with contextlib.suppress(httpx.HTTPError):
            stats = [httpx.get(f"{u}/v1/stats", timeout=10.0).json() for u in urls]
            parts = [int(s["parts"]) for s in stats]
            if parts != last:
                last, since = parts, time.perf_counter()
            pending = [s.get("compaction_pending_hours") for s in stats]
            if all(p == 0 for p in pending):
                return round(time.perf_counter() - t0, 1)
            if None in pending and time.perf_counter() - since >= quiet_s:
                return round(since - t0, 1)
        time.sleep(1.0)
    return None


@dataclass
class ServerProcess:
    """``with ServerProcess(data_dir) as server:`` -> a ready server at ``server.url``."""

    data_dir: Path
    command: str = DEFAULT_COMMAND
    ready_timeout_s: float = 120.0
    stop_timeout_s: float = 60.0
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def start_sampled(self) -> RssSampler:
        """``start()``, then an ``RssSampler`` of the server's process tree, already running."""
        self.start()
        assert self.proc is not None
        sampler = RssSampler(self.proc.pid)
        sampler.start()
        return sampler

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = shlex.split(self.command.format(port=self.port, data=self.data_dir))
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + self.ready_timeout_s
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise ServerError(f"server exited with {self.proc.returncode}; see {self.log_path}")
                try:
                    if client.get(f"{self.url}/ready").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise ServerError(f"server not ready after {self.ready_timeout_s}s; see {self.log_path}")

    def stop(self) -> int | None:
        """Stops the server gracefully (SIGTERM, then SIGKILL); returns its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class RssSampler(threading.Thread):
    """Samples the RSS of a process and its descendants until ``close()``; peak per phase."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        self.phase = "start"
        self.peaks: dict[str, int] = {}
        self.last = 0
        self._done = threading.Event()

    def sample(self) -> int:
        total = 0
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    def run(self) -> None:
        while not self._done.is_set():
            rss = self.sample()
            if rss:
                self.last = rss
                self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)
            self._done.wait(self.interval_s)

    def enter(self, phase: str) -> None:
        """Later samples count toward ``phase``; one sample is taken now so short phases count."""
        self.phase = phase
        rss = self.sample()
        if rss:
            self.peaks[phase] = max(self.peaks.get(phase, 0), rss)

    def close(self) -> dict[str, int]:
        self._done.set()
        self.join()
        return dict(self.peaks)
