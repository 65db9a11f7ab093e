"""This node's current cluster map: the one it starts with, the newer ones it adopts, and how it
spreads them.

A map is saved to the data directory before it is used, so a restarted node routes by the newest
map it ever adopted. Of two maps, the one with the higher epoch wins; two maps of one epoch (made
at the same time on two nodes) are ordered by a hash of their content, so every node picks the
same one. Maps spread two ways: ``publish`` pushes a new map to every node of the old and the new
map, and each health probe compares epochs and map ids, so a node that missed a push learns the
map from the next probe either way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import structlog
import xxhash

from cluster.errors import MembershipError, PeerError
from cluster.membership import ClusterMap, Member
from cluster.peers import PeerClient

__all__ = ["MapKeeper", "initial_map", "map_id"]

log = structlog.get_logger("tributary.node")


def map_id(cmap: ClusterMap) -> int:
    """Orders maps of one epoch made concurrently on two nodes, so all nodes pick the same."""
    return xxhash.xxh64_intdigest(repr(cmap.to_json()).encode()) >> 1


def initial_map(me: str, data_dir: Path, shards: int, peers: Sequence[Member], rf: int, url: str) -> ClusterMap:
    """The map a node starts with: the stored one unless ``peers`` (epoch 1) is newer; with no
    ``peers``, a cluster of one at epoch 0, which any real map pushed to it replaces. Saved
    before it is returned. Raises ``MembershipError`` if ``peers`` does not name ``me`` or the
    data directory belongs to a cluster of another shard count."""
    if peers:
        if not any(m.node_id == me for m in peers):
            raise MembershipError(f"--peers does not name this node ({me})")
        given = ClusterMap(1, rf, shards, tuple(sorted(peers, key=lambda m: m.node_id)))
    else:
        given = ClusterMap(0, rf, shards, (Member(me, url),))
    stored = ClusterMap.load(data_dir)
    if stored is not None and stored.shards != shards:
        raise MembershipError(f"the data directory belongs to a cluster of {stored.shards} shards, not {shards}")
    cmap = stored if stored is not None and stored.epoch >= given.epoch else given
    cmap.save(data_dir)
    return cmap


class MapKeeper:
    """Holds the current map; ``adopt`` and ``publish`` are safe from any thread.

    ``peers`` and ``is_up`` reach the other nodes; ``on_adopt`` runs after each newer map is
    taken (the node asks its repairer to look at the new placement).
    """

    def __init__(
        self,
        me: str,
        data_dir: Path,
        cmap: ClusterMap,
        peers: PeerClient,
        pool: Executor,
        is_up: Callable[[str], bool],
        on_adopt: Callable[[], None],
    ) -> None:
        self.me = me
        self.data_dir = data_dir
        self.cmap = cmap
        self.peers = peers
        self.pool = pool
        self.is_up = is_up
        self.on_adopt = on_adopt
        self._lock = threading.Lock()

    def adopt(self, cmap: ClusterMap) -> bool:
        """Take ``cmap`` if it is newer than ours (higher epoch; same epoch: higher map id)."""
        if cmap.shards != self.cmap.shards:
            log.error("refusing a cluster map with another shard count", shards=cmap.shards)
            return False
        with self._lock:
            cur = self.cmap
            if (cmap.epoch, map_id(cmap)) <= (cur.epoch, map_id(cur)):
                return False
            cmap.save(self.data_dir)
            self.cmap = cmap
        log.info("cluster map adopted", epoch=cmap.epoch, nodes=[(m.node_id, m.state) for m in cmap.members])
        self.on_adopt()
        return True

    def publish(self, cmap: ClusterMap) -> None:
        """Adopt ``cmap`` and push it to every node of the old and the new map (best effort:
        nodes that miss it learn it from the epoch in the next probe)."""
        old = self.cmap
        self.adopt(cmap)
        urls = {m.node_id: m.url for m in (*old.members, *cmap.members) if m.node_id != self.me}
        body = cmap.to_json()
        futures = [self.pool.submit(self.peers.push_map, n, body, url) for n, url in urls.items()]
        for f in futures:
            try:
                f.result()
            except PeerError as e:
                log.info("map push failed; gossip will carry it", error=str(e)[:200])

    def exchange(self, peer: str, body: dict[str, Any]) -> None:
        """After a health probe of ``peer``: fetch its map if newer, push ours if older."""
        theirs = (int(body.get("epoch", 0) or 0), int(body.get("map_id", 0) or 0))
        cur = self.cmap
        mine = (cur.epoch, map_id(cur))
        try:
            if theirs > mine:
                self.adopt(ClusterMap.from_json(self.peers.get_map(peer)))
            elif theirs < mine:
                self.peers.push_map(peer, cur.to_json())
        except (PeerError, MembershipError) as e:
            log.info("map exchange failed", peer=peer, error=str(e)[:200])

    def on_stale(self, peer: str) -> None:
        """``peer`` says our map is stale: fetch its map."""
        self.exchange(peer, {"epoch": 1 << 62})

    def refresh(self) -> None:
        """Ask every up peer for its map and adopt the newest."""
        for m in self.cmap.members:
            if m.node_id != self.me and self.is_up(m.node_id):
                try:
                    self.adopt(ClusterMap.from_json(self.peers.get_map(m.node_id)))
                except (PeerError, MembershipError):
                    continue
