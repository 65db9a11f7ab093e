"""A cluster inside the test process: real ``Node`` objects served by uvicorn on loopback ports,
so the cluster paths run over real HTTP without spawning processes. ``down(name)`` stops a
node's server (its peers get connection refused) and ``up(name)`` serves it again."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from cluster.detector import DetectorConfig
from cluster.membership import Member
from cluster.node import ClusterConfig, Node, NodeConfig
from cluster.peers import PeerConfig
from cluster.upkeep import UpkeepConfig
from ingest.wal import WalConfig
from tests.support.process import free_port
from web.app import create_app
from web.settings import Settings

__all__ = ["InProcCluster", "inproc"]

SECRET = "inproc-secret"


class InProcCluster:
    def __init__(self, root: Path, n: int, rf: int, repair_interval_s: float = 0.5) -> None:
        self.root = root
        self.rf = rf
        self.repair_interval_s = repair_interval_s
        self.ports = {f"n{i + 1}": free_port() for i in range(n)}
        members = tuple(Member(k, f"http://127.0.0.1:{p}") for k, p in self.ports.items())
        self.nodes: dict[str, Node] = {}
        self._servers: dict[str, tuple[uvicorn.Server, threading.Thread]] = {}
        for name in list(self.ports):
            self._start(name, members)

    def _start(self, name: str, members: tuple[Member, ...]) -> Node:
        port = self.ports[name]
        cfg = NodeConfig(
            data_dir=self.root / name,
            node_id=name,
            wal=WalConfig(fsync=False),
            cluster=ClusterConfig(
                peers=members,
                rf=self.rf,
                url=f"http://127.0.0.1:{port}",
                peer=PeerConfig(secret=SECRET, timeout_s=2.0, probe_timeout_s=1.0),
                detector=DetectorConfig(interval_s=0.1, stall_s=5.0),
                upkeep=UpkeepConfig(tick_s=0.05, repair_interval_s=self.repair_interval_s, catch_up_timeout_s=10),
                read_timeout_s=2.0,
            ),
        )
        self.nodes[name] = Node(cfg)
        self.up(name)
        return self.nodes[name]

    def add(self, name: str) -> Node:
        """A new node on its own (a cluster of one), served and ready to be joined."""
        self.ports[name] = free_port()
        return self._start(name, ())

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def up(self, name: str) -> None:
        app = create_app(self.nodes[name], Settings(node_id=name, port=self.ports[name], cluster_secret=SECRET))
        app.app.on_shutdown.clear()  # the node outlives its server here
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.ports[name], log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, f"{name} did not start serving"
            time.sleep(0.01)
        self._servers[name] = (server, thread)

    def down(self, name: str) -> None:
        server, thread = self._servers.pop(name)
        server.should_exit = True
        thread.join(10)
        for other in self.nodes.values():
            other.detector.suspect(name)

    def wait(self, what: str, check: object, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not check():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"{what}: not true after {timeout} s"
            time.sleep(0.05)

    def serving(self) -> bool:
        """Every live node serves reads, and each has seen every other live node serving (a
        read routes only to peers its detector has seen serving)."""
        live = [name for name in self.nodes if name in self._servers]
        return all(self.nodes[n].serving for n in live) and all(
            self.nodes[a].detector.is_serving(b) for a in live for b in live if a != b
        )

    def close(self) -> None:
        for name in list(self._servers):
            self.down(name)
        for node in self.nodes.values():
            node.close(persist=False)


@pytest.fixture
def inproc(tmp_path: Path) -> Iterator[type[InProcCluster]]:
    made: list[InProcCluster] = []

    class Made(InProcCluster):
        def __init__(self, n: int = 3, rf: int = 2, repair_interval_s: float = 0.5) -> None:
            super().__init__(tmp_path / f"c{len(made)}", n, rf, repair_interval_s)
            made.append(self)

    yield Made
    for c in made:
        c.close()
