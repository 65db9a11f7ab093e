"""``tributary cluster up``: a local cluster in one terminal, supervised.

Starts N ``tributary serve`` children on consecutive ports of one host, each with its own data
directory, the same ``--peers`` list and one shared cluster secret (random unless given; it is
passed through the environment, never on a command line). Every child's output is printed with
its node id in front. A child that exits on its own is restarted (at most ``max_restarts``
times in a row within a minute); Ctrl-C stops them all — SIGTERM, which persists their live
buffers, then SIGKILL for any still there after ``grace_s``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

__all__ = ["ClusterSpec", "Supervisor"]

_COLOURS = ["36", "35", "33", "32", "34", "31", "96", "95", "93"]


@dataclass(frozen=True)
class ClusterSpec:
    nodes: int = 3
    rf: int = 2
    host: str = "127.0.0.1"
    base_port: int = 8321
    data: Path = Path("./cluster")
    secret: str = ""
    extra_args: tuple[str, ...] = ()
    restart: bool = True
    max_restarts: int = 5
    grace_s: float = 15.0

    @property
    def ids(self) -> list[str]:
        return [f"n{i + 1}" for i in range(self.nodes)]

    def url(self, i: int) -> str:
        return f"http://{self.host}:{self.base_port + i}"

    @property
    def peers(self) -> str:
        return ",".join(f"{n}={self.url(i)}" for i, n in enumerate(self.ids))


@dataclass
class _Child:
    node_id: str
    command: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)


class Supervisor:
    def __init__(self, spec: ClusterSpec, out: IO[str] | None = None) -> None:
        self.spec = spec
        self.secret = spec.secret or secrets.token_urlsafe(24)
        self.out = out or sys.stdout
        self._print_lock = threading.Lock()
        self._stopping = threading.Event()
        self.children = [_Child(n, self._command(i, n)) for i, n in enumerate(spec.ids)]

    def _command(self, i: int, node_id: str) -> list[str]:
        s = self.spec
        return [
            sys.executable, "-m", "web.cli", "serve",
            "--host", s.host, "--port", str(s.base_port + i), "--data", str(s.data / node_id),
            "--node-id", node_id, "--peers", s.peers, "--rf", str(s.rf),
            *s.extra_args,
        ]  # fmt: skip

    def say(self, node_id: str, line: str) -> None:
        colour = _COLOURS[self.spec.ids.index(node_id) % len(_COLOURS)] if node_id in self.spec.ids else "0"
        tty = getattr(self.out, "isatty", lambda: False)()
        prefix = f"\x1b[{colour}m{node_id:>4} |\x1b[0m " if tty else f"{node_id:>4} | "
        with self._print_lock:
            self.out.write(prefix + line.rstrip("\n") + "\n")
            self.out.flush()

    def _spawn(self, child: _Child) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TRIBUTARY_CLUSTER_SECRET": self.secret}
        child.proc = subprocess.Popen(
            child.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        threading.Thread(target=self._pump, args=(child, child.proc), daemon=True).start()

    def _pump(self, child: _Child, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self.say(child.node_id, raw.decode(errors="replace"))

    def start(self) -> None:
        for c in self.children:
            self._spawn(c)
        self.say("up", f"{self.spec.nodes} nodes, rf={self.spec.rf}: {self.spec.peers}")

    def watch(self, poll_s: float = 0.5) -> None:
        """Restart children that die, until ``stop`` (or until all are given up on)."""
        while not self._stopping.wait(poll_s):
            alive = 0
            for c in self.children:
                if c.proc is None:
                    continue
                code = c.proc.poll()
                if code is None:
                    alive += 1
                    continue
                now = time.monotonic()
                c.restarts = [t for t in c.restarts if now - t < 60]
                if not self.spec.restart or len(c.restarts) >= self.spec.max_restarts:
                    self.say(c.node_id, f"exited with {code}; not restarting")
                    c.proc = None
                    continue
                self.say(c.node_id, f"exited with {code}; restarting")
                c.restarts.append(now)
                self._spawn(c)
                alive += 1
            if not alive:
                return

    def stop(self) -> None:
        self._stopping.set()
        procs = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.spec.grace_s
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.wait()

    def run(self) -> None:
        """Start, watch, and stop everything on Ctrl-C (or SIGTERM to the supervisor)."""
        previous = signal.signal(signal.SIGTERM, lambda *_: self._stopping.set())
        self.start()
        try:
            self.watch()
        except KeyboardInterrupt:
            pass
        finally:
            self.say("up", "stopping all nodes")
            self.stop()
            signal.signal(signal.SIGTERM, previous)
