"""Real ``tributary serve`` processes for integration tests: start, probe, kill, freeze, restart.

Every process started here is killed at interpreter exit at the latest (``atexit``), and the
``node_factory`` fixture stops its nodes when the test ends, printing their log tails when the
test failed. Import the fixture into a conftest (or a test module)::

    from tests.support.process import node_factory  # noqa: F401
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

import httpx
import pytest

__all__ = ["NodeFactory", "NodeProcess", "free_port", "node_factory"]

REPO = Path(__file__).resolve().parents[2]
_live: set[NodeProcess] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's pick; racy only in theory)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class NodeProcess:
    """One ``python -m web.cli serve`` process on a fixed port and data dir, kept across restarts.

    Output (stdout + stderr) is appended to ``DATA/node.log``. As a context manager it starts,
    waits until ready, and stops the node at exit.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        *,
        host: str = "127.0.0.1",
        name: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.args = list(args)
        self.env = dict(env or {})
        self.name = name or self.data_dir.name
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.data_dir / "node.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "web.cli", "serve",
            "--host", self.host, "--port", str(self.port), "--data", str(self.data_dir),
            *self.args,
        ]  # fmt: skip

    def start(self) -> NodeProcess:
        """Spawn the process (returns at once; see ``wait_ready``)."""
        assert not self.running, f"{self.name} is already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self._log.write(f"\n=== start {' '.join(self.command())}\n".encode())
        self._log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(
            self.command(), cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        _live.add(self)
        return self

    def wait_ready(self, timeout: float = 30.0) -> NodeProcess:
        """Poll ``GET /ready`` until 200. Raises RuntimeError (with the log tail) if the process
        exits first, TimeoutError if the deadline passes."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as http:
            while True:
                if not self.running:
                    raise RuntimeError(f"{self.name} exited with {self._returncode()}:\n{self.log_tail()}")
                try:
                    if http.get(self.url + "/ready").status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} not ready after {timeout} s:\n{self.log_tail()}")
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL and reap: the crash case."""
        self._signal(signal.SIGKILL)
        self._reap(30.0)

    def terminate(self, timeout: float = 15.0) -> None:
        """SIGTERM (a frozen process is thawed first), then SIGKILL if it lingers."""
        if not self.running:
            self._reap(0)
            return
        self._signal(signal.SIGTERM)
        self._signal(signal.SIGCONT)
        try:
            assert self.proc is not None
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
        self._reap(30.0)

    def stop(self) -> None:
        """SIGSTOP: the process stays, holds its sockets and answers nothing (a hung node)."""
        self._signal(signal.SIGSTOP)

    def cont(self) -> None:
        """SIGCONT: thaw after ``stop``."""
        self._signal(signal.SIGCONT)

    def restart(self, timeout: float = 30.0) -> NodeProcess:
        """Terminate (if running), start again on the same port and data dir, wait until ready."""
        self.terminate()
        return self.start().wait_ready(timeout)

    def close(self) -> None:
        """Stop the node however it is (running, frozen, dead) and release the log file."""
        self.terminate()

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> NodeProcess:
        return self.start().wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def _signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def _reap(self, timeout: float) -> None:
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        _live.discard(self)


@atexit.register
def _kill_all() -> None:
    for node in list(_live):
        node.kill()


class NodeFactory:
    """Makes nodes with data dirs under ``root/<name>``, started and ready unless ``start=False``;
    ``close_all`` stops every one it made. The ``node_factory`` fixture is one per test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[NodeProcess] = []

    def __call__(
        self,
        name: str = "n1",
        *,
        port: int | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        start: bool = True,
        ready_timeout: float = 30.0,
    ) -> NodeProcess:
        node = NodeProcess(self.root / name, port, args, env, name=name)
        self.made.append(node)
        if start:
            node.start().wait_ready(ready_timeout)
        return node

    def close_all(self, *, print_logs: bool = False) -> None:
        for node in self.made:
            node.close()
            if print_logs:
                print(f"\n----- {node.name} ({node.url}) log tail -----\n{node.log_tail()}")


@pytest.fixture
def node_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[NodeFactory]:
    """A ``NodeFactory`` under ``tmp_path``. All its nodes are stopped when the test ends; their
    log tails are printed if it failed."""
    failed_before = request.session.testsfailed
    factory = NodeFactory(tmp_path)
    yield factory
    factory.close_all(print_logs=request.session.testsfailed > failed_before)
