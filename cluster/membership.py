"""The cluster map: which nodes exist, where they listen, what state each is in, under an epoch.

Every node keeps the map in ``DATA/cluster.json`` and adopts any map with a higher epoch than its
own (changes are pushed to all nodes, and nodes compare epochs on every probe), so all nodes end
with the newest map whatever order the pushes arrive in. States:

- ``active``: owns its shards for reads and writes.
- ``joining``: receives writes for the shards it will own and is being filled by shipping; not
  read from until the change completes and it becomes ``active``.
- ``leaving``: still owns its shards for reads and writes while they are shipped to their new
  owners; removed from the map when the change completes.

During a change, ``read_replicas`` are the owners before it (active + leaving) and
``final_replicas`` the owners after it (active + joining); writes go to both, so nothing written
during the change is missing at either end.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from cluster.errors import MembershipError
from cluster.shardmap import ShardMap, majority

__all__ = ["ACTIVE", "JOINING", "LEAVING", "ClusterMap", "Member", "parse_peers"]

ACTIVE, JOINING, LEAVING = "active", "joining", "leaving"
_STATES = (ACTIVE, JOINING, LEAVING)
MAP_FILE = "cluster.json"


@dataclass(frozen=True)
class Member:
    node_id: str
    url: str
    state: str = ACTIVE


def parse_peers(text: str) -> list[Member]:
    """``n1=http://h1:8321,n2=http://h2:8321`` -> members (all active)."""
    out: list[Member] = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        node_id, sep, url = item.partition("=")
        if not sep or not node_id.strip() or not url.strip().startswith(("http://", "https://")):
            raise MembershipError(f"peer {item!r} is not node_id=http://host:port")
        out.append(Member(node_id.strip(), url.strip().rstrip("/")))
    ids = [m.node_id for m in out]
    if len(set(ids)) != len(ids):
        raise MembershipError(f"a node id appears twice in --peers: {ids}")
    return out


@dataclass(frozen=True)
class ClusterMap:
    """An immutable version of the cluster map; derived shard maps are cached per instance."""

    epoch: int
    rf: int
    shards: int
    members: tuple[Member, ...] = field(default_factory=tuple)

    # -- lookups --------------------------------------------------------------------------------

    def member(self, node_id: str) -> Member | None:
        return next((m for m in self.members if m.node_id == node_id), None)

    def url_of(self, node_id: str) -> str:
        m = self.member(node_id)
        if m is None:
            raise MembershipError(f"node {node_id!r} is not in the cluster map (epoch {self.epoch})")
        return m.url

    @property
    def node_ids(self) -> list[str]:
        return [m.node_id for m in self.members]

    @property
    def in_transition(self) -> bool:
        return any(m.state != ACTIVE for m in self.members)

    def is_single(self, node_id: str) -> bool:
        """A cluster of one: this node alone, active. Takes the fast local paths."""
        return len(self.members) == 1 and self.members[0].node_id == node_id and not self.in_transition

    @cached_property
    def read_map(self) -> ShardMap:
        return ShardMap((m.node_id for m in self.members if m.state in (ACTIVE, LEAVING)), self.rf, self.shards)

    @cached_property
    def final_map(self) -> ShardMap:
        return ShardMap((m.node_id for m in self.members if m.state in (ACTIVE, JOINING)), self.rf, self.shards)

    @cached_property
    def _write_sets(self) -> list[tuple[str, ...]]:
        reads, finals = self.read_map.all_replicas(), self.final_map.all_replicas()
        return [r + tuple(n for n in f if n not in r) for r, f in zip(reads, finals, strict=True)]

    def read_replicas(self, shard: int) -> tuple[str, ...]:
        return self.read_map.replicas(shard)

    def final_replicas(self, shard: int) -> tuple[str, ...]:
        return self.final_map.replicas(shard)

    def write_replicas(self, shard: int) -> tuple[str, ...]:
        """Owners before and after a change (the same set when there is none)."""
        return self._write_sets[shard]

    def write_sets(self) -> list[tuple[str, ...]]:
        return self._write_sets

    @property
    def w(self) -> int:
        """Durable copies needed before a write is acknowledged: a majority of the effective RF."""
        return majority(self.read_map.width or 1)

    def shards_held_by(self, node_id: str) -> list[int]:
        """Shards ``node_id`` must hold under this map (as a reader or a writer)."""
        return [s for s, nodes in enumerate(self._write_sets) if node_id in nodes]

    # -- changes --------------------------------------------------------------------------------

    def with_member(self, member: Member) -> ClusterMap:
        """The next epoch with ``member`` added (or its url/state replaced)."""
        if member.state not in _STATES:
            raise MembershipError(f"unknown state {member.state!r}")
        others = tuple(m for m in self.members if m.node_id != member.node_id)
        return replace(self, epoch=self.epoch + 1, members=tuple(sorted((*others, member), key=_key)))

    def without(self, node_id: str) -> ClusterMap:
        return replace(self, epoch=self.epoch + 1, members=tuple(m for m in self.members if m.node_id != node_id))

    def settled(self) -> ClusterMap:
        """The next epoch with the change completed: joining -> active, leaving -> gone."""
        members = tuple(replace(m, state=ACTIVE) for m in self.members if m.state != LEAVING)
        return replace(self, epoch=self.epoch + 1, members=members)

    # -- wire and disk --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "rf": self.rf,
            "shards": self.shards,
            "nodes": [{"node_id": m.node_id, "url": m.url, "state": m.state} for m in self.members],
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> ClusterMap:
        try:
            members = tuple(Member(str(n["node_id"]), str(n["url"]), str(n.get("state", ACTIVE))) for n in d["nodes"])
            cmap = ClusterMap(int(d["epoch"]), int(d["rf"]), int(d["shards"]), tuple(sorted(members, key=_key)))
        except (KeyError, TypeError, ValueError) as e:
            raise MembershipError(f"not a cluster map: {e}") from e
        if any(m.state not in _STATES for m in cmap.members):
            raise MembershipError("a cluster map member has an unknown state")
        return cmap

    def save(self, root: Path) -> None:
        """Write ``DATA/cluster.json`` atomically and durably."""
        path = root / MAP_FILE
        tmp = path.with_suffix(".json.tmp")
        with open(tmp, "w") as f:
            json.dump(self.to_json(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @staticmethod
    def load(root: Path) -> ClusterMap | None:
        path = root / MAP_FILE
        with contextlib.suppress(FileNotFoundError):
            return ClusterMap.from_json(json.loads(path.read_text()))
        return None


def _key(m: Member) -> str:
    return m.node_id
