"""Anti-entropy and hand-off: replicas converge by comparing digests and shipping what differs.

``sync(peer, shards)`` compares this node's holdings with a peer's: shard digests first, hour
digests for the shards that differ, then batch-id lists for the (shard, hour) slices that differ;
batches the peer lacks are shipped to it as Parquet, and with ``pull`` the batches we lack are
fetched from it. Both sides store each slice once, so a sync racing writes, hints or another
sync never double-counts; after a sync the peer holds every batch we held when it began.

``Repairer.round`` runs a push sync with every peer that should hold a shard we hold: the
co-replicas (anti-entropy) and, during a membership change or after one, the new owners of
shards we hold (hand-off). A shard we hold but no longer own is evicted only after every owner
confirmed, by such a sync under the current epoch, that it holds all of our batches.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import structlog

from cluster.detector import Detector
from cluster.errors import PeerError
from cluster.holdings import Holdings
from cluster.membership import ClusterMap
from cluster.peers import PeerClient
from storage.shipping import PARQUET, pack_parquet, unpack

__all__ = ["Repairer", "SyncResult"]

log = structlog.get_logger("tributary.repair")

_SHIP_SLICES = 256  # (shard, hour, batches) slices per shipment: bounded memory on both ends
_SHIP_BYTES = 8 << 20  # ... and at most this much in memory (a single larger slice goes alone)


@dataclass
class SyncResult:
    slices_differing: int = 0
    pushed_rows: int = 0
    pulled_rows: int = 0
    unconfirmed: set[int] = field(default_factory=set)  # shards the peer still lacks batches of


@dataclass
class _Confirmations:
    epoch: int = -1
    done: dict[str, set[int]] = field(default_factory=dict)  # peer -> shards confirmed this epoch


class Repairer:
    def __init__(
        self,
        me: str,
        cmap: Callable[[], ClusterMap],
        holdings: Holdings,
        peers: PeerClient,
        detector: Detector,
        read_slices: Callable[[Sequence[tuple[int, int, Sequence[int]]]], pa.Table],
        store_local: Callable[[pa.Table, int], tuple[int, bool]],
        evict: Callable[[list[int]], int],
        horizon: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.me = me
        self.cmap = cmap
        self.holdings = holdings
        self.peers = peers
        self.detector = detector
        self.read_slices = read_slices
        self.store_local = store_local
        self.evict = evict
        self.horizon = horizon  # hours at or before it are expired: never shipped back
        self._conf = _Confirmations()
        self._lock = threading.Lock()
        self.shipped_rows = 0
        self.fetched_rows = 0
        self.evicted_shards = 0

    # -- one peer -------------------------------------------------------------------------------

    def sync(
        self, peer: str, shards: Sequence[int], *, pull: bool = False, push: Collection[int] | None = None
    ) -> SyncResult:
        """Make ``peer`` hold every batch we hold of ``shards`` (and, with ``pull``, the reverse).
        With ``push``, only those shards are shipped; the others are only compared, and the ones
        the peer still lacks batches of are reported ``unconfirmed``."""
        res = SyncResult()
        if not shards:
            return res
        mine = self.holdings.shard_digests(shards)
        theirs = {int(s): (int(t), int(n)) for s, t, n in self.peers.digests(peer, shards, "shard")}
        differ = [s for s in shards if mine.get(s, (0, 0)) != theirs.get(s, (0, 0))]
        if not differ:
            return res
        mine_h = self.holdings.hour_digests(differ)
        theirs_h = {(int(s), int(h)): (int(t), int(n)) for s, h, t, n in self.peers.digests(peer, differ, "hour")}
        cut = self.horizon()
        slices = sorted(
            k
            for k in mine_h.keys() | theirs_h.keys()
            if mine_h.get(k) != theirs_h.get(k) and (cut is None or k[1] > cut)
        )
        res.slices_differing = len(slices)
        if not slices:
            return res
        their_ids = self.peers.batch_ids(peer, slices)
        my_ids = self.holdings.batch_ids(slices)
        lacking = [(s, h, sorted(my_ids[(s, h)] - their_ids.get((s, h), set()))) for s, h in slices]
        lacking = [x for x in lacking if x[2]]
        ship = lacking if push is None else [x for x in lacking if x[0] in push]
        res.unconfirmed = {x[0] for x in lacking} - {x[0] for x in ship}
        if ship:
            res.pushed_rows = self._push(peer, ship)
        if pull:
            want = [(s, h, sorted(their_ids.get((s, h), set()) - my_ids[(s, h)])) for s, h in slices]
            want = [x for x in want if x[2]]
            if want:
                rows = unpack(self.peers.fetch(peer, want), PARQUET)
                self.store_local(rows, 0)
                res.pulled_rows = rows.num_rows
                self.fetched_rows += rows.num_rows
        return res

    def _push(self, peer: str, wanted: list[tuple[int, int, list[int]]]) -> int:
        # Shipments hold whole slices only: the receiver claims a slice as a unit, so a slice
        # split over two shipments would lose its second half.
        sent = 0
        # (slices, their rows once read), popped in order; a shipment over the byte budget (the
        # receiver's buffer must hold it whole) is split in two, its rows carved, not read again
        todo: list[tuple[list[tuple[int, int, list[int]]], pa.Table | None]] = [
            (wanted[i : i + _SHIP_SLICES], None) for i in range(0, len(wanted), _SHIP_SLICES)
        ][::-1]
        while todo:
            chunk, rows = todo.pop()
            if rows is None:
                rows = self.read_slices(chunk)
            if rows.nbytes > _SHIP_BYTES and len(chunk) > 1:
                half = len(chunk) // 2
                for part in (chunk[half:], chunk[:half]):
                    todo.append((part, self.holdings.select(rows, [(s, h, b) for s, h, ids in part for b in ids])))
                continue
            if rows.num_rows:
                self.peers.ingest(peer, pack_parquet(rows), parquet=True)
                sent += rows.num_rows
        self.shipped_rows += sent
        return sent

    # -- a round with every peer ----------------------------------------------------------------

    def targets(self, cmap: ClusterMap) -> dict[str, list[int]]:
        """Per peer, the shards it should hold that we hold (or own)."""
        held = set(self.holdings.shards())
        out: dict[str, list[int]] = {}
        for s, nodes in enumerate(cmap.write_sets()):
            if s not in held and self.me not in nodes:
                continue
            for n in set(nodes) | set(cmap.final_replicas(s)):
                if n != self.me:
                    out.setdefault(n, []).append(s)
        return out

    def round(self, *, pull: bool = False, peers_only: Sequence[str] | None = None) -> dict[str, SyncResult]:
        """Sync with every up peer that shares shards with us; then evict what we gave away."""
        cmap = self.cmap()
        results: dict[str, SyncResult] = {}
        with self._lock:
            if self._conf.epoch != cmap.epoch:
                self._conf = _Confirmations(cmap.epoch)
            conf = self._conf
        for peer, shards in sorted(self.targets(cmap).items()):
            if peers_only is not None and peer not in peers_only:
                continue
            if not self.detector.is_up(peer):
                continue
            try:
                results[peer] = res = self.sync(peer, shards, pull=pull, push=self._ours_to_ship(cmap, peer, shards))
            except PeerError as e:
                if e.status == 0:
                    self.detector.suspect(peer)
                log.info("sync with peer failed", peer=peer, error=str(e)[:200])
                continue
            with self._lock:
                if conf is self._conf:
                    conf.done.setdefault(peer, set()).update(set(shards) - res.unconfirmed)
        self._evict_given_away(cmap)
        return results

    def _ours_to_ship(self, cmap: ClusterMap, peer: str, shards: Sequence[int]) -> set[int]:
        """Shards we ship to ``peer`` ourselves. To a co-replica: all (anti-entropy). To a new
        owner: only where we lead the shard (first up replica before the change) or are no
        longer an owner, so its old replicas do not all ship it the same rows at once; the
        others only compare, and confirm once the leader's shipment has landed."""
        out = set()
        for s in shards:
            readers = cmap.read_replicas(s)
            lead = next((n for n in readers if self.detector.is_up(n)), None)
            if peer in readers or self.me not in readers or lead in (None, self.me):
                out.add(s)
        return out

    def pending(self) -> int:
        """Shards we hold whose final owners have not all confirmed them under this epoch."""
        cmap = self.cmap()
        with self._lock:
            done = self._conf.done if self._conf.epoch == cmap.epoch else {}
        held = self.holdings.shards()
        return sum(1 for s in held if any(s not in done.get(o, ()) for o in cmap.final_replicas(s) if o != self.me))

    def _evict_given_away(self, cmap: ClusterMap) -> None:
        with self._lock:
            done = self._conf.done if self._conf.epoch == cmap.epoch else {}
        sets = cmap.write_sets()
        gone = [
            s
            for s in self.holdings.shards()
            if self.me not in sets[s] and sets[s] and all(s in done.get(o, ()) for o in sets[s])
        ]
        if not gone:
            return
        # Writes routed here by a stale map may have landed since the confirming sync: stop
        # taking writes for these shards, sync once more, and only then drop them.
        self.holdings.block(gone)
        try:
            owners: dict[str, list[int]] = {}
            for s in gone:
                for o in sets[s]:
                    owners.setdefault(o, []).append(s)
            for o, shards in owners.items():
                self.sync(o, shards)
            rows = self.evict(gone)
        except PeerError as e:
            log.info("hand-off not confirmed; keeping the shards for now", error=str(e)[:200])
            return
        finally:
            self.holdings.unblock(gone)
        self.evicted_shards += len(gone)
        log.info("evicted shards handed to their owners", shards=len(gone), rows=rows, epoch=cmap.epoch)
