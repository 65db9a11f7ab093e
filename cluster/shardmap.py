"""The shard map: which nodes hold which shard, by rendezvous (highest random weight) hashing.

A shard's replica set is the top-``rf`` nodes ranked by a 64-bit score of (node_id, shard). The
score depends on nothing but the pair, so adding a node moves to it exactly the shards it now
ranks in the top ``rf`` for (about ``rf / n`` of them) and no others, and removing one moves only
its own shards. Scores are computed for all shards at once with a vectorised SplitMix64
finaliser, so a 100-node map of 65,536 shards builds in milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import xxhash

__all__ = ["ShardMap", "majority", "scores"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(h: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser over a uint64 array (wrapping arithmetic, as intended)."""
    h = h ^ (h >> np.uint64(30))
    h = h * _M1
    h = h ^ (h >> np.uint64(27))
    h = h * _M2
    out: np.ndarray = h ^ (h >> np.uint64(31))
    return out


def scores(node_id: str, shards: int) -> np.ndarray:
    """The rendezvous score of ``node_id`` for every shard ``0..shards-1`` (uint64)."""
    seed = np.uint64(xxhash.xxh64_intdigest(node_id.encode()))
    ids = np.arange(shards, dtype=np.uint64)
    return _mix(seed ^ _mix(ids * _GOLDEN + _GOLDEN))


class ShardMap:
    """Replica sets of every shard over a set of node ids: top-``rf`` by score, best first.

    With fewer nodes than ``rf`` every shard is on every node. Ties (astronomically rare) are
    broken by node id, so every node computes the same map from the same ids.
    """

    def __init__(self, node_ids: Iterable[str], rf: int, shards: int) -> None:
        self.node_ids: tuple[str, ...] = tuple(sorted(set(node_ids)))
        self.rf = rf
        self.shards = shards
        self.width = min(rf, len(self.node_ids))
        if not self.node_ids:
            self._table = np.zeros((0, shards), dtype=np.int64)
            return
        matrix = np.stack([scores(n, shards) for n in self.node_ids])  # (nodes, shards)
        cols = np.arange(shards)
        rows = []
        for _ in range(self.width):  # argmax takes the first of equal scores: node-id order
            best = np.argmax(matrix, axis=0)
            rows.append(best)
            matrix[best, cols] = 0
        self._table = np.stack(rows)  # (width, shards): node indexes, best first

    def replicas(self, shard: int) -> tuple[str, ...]:
        """The nodes holding ``shard``, highest score first."""
        return tuple(self.node_ids[i] for i in self._table[:, shard])

    def all_replicas(self) -> list[tuple[str, ...]]:
        """``replicas(s)`` for every shard, indexed by shard."""
        names = self.node_ids
        cols = self._table.T.tolist()
        return [tuple(names[i] for i in col) for col in cols]

    def shards_of(self, node_id: str) -> list[int]:
        """The shards ``node_id`` is a replica of, ascending."""
        if node_id not in self.node_ids:
            return []
        i = self.node_ids.index(node_id)
        return sorted(int(s) for s in np.nonzero((self._table == i).any(axis=0))[0])

    def load(self) -> dict[str, int]:
        """Replica count per node (how many shards each holds)."""
        if not self.node_ids:
            return {}
        counts = np.bincount(self._table.ravel(), minlength=len(self.node_ids)).tolist()
        return {n: int(c) for n, c in zip(self.node_ids, counts, strict=True)}

    @staticmethod
    def moved(before: ShardMap, after: ShardMap) -> list[int]:
        """Shards whose replica set differs between two maps."""
        a, b = before.all_replicas(), after.all_replicas()
        return [s for s in range(min(len(a), len(b))) if set(a[s]) != set(b[s])]


def majority(rf: int) -> int:
    """W for a replication factor: the smallest majority."""
    return rf // 2 + 1
