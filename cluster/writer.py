"""Write fan-out: a coordinator splits a batch by shard and stores each part on its replicas.

Acknowledgement rule (issue 3, DESIGN.md "Write path"): every shard of the batch must be durable
on **W disks** (W = majority of RF). A disk counts once per shard whether it holds a real copy
(the replica's WAL, fsynced) or a **hint** (the rows kept durably for a replica that was down or
did not answer within the timeout). Hints are written on the coordinator's disk when that disk
does not already hold a copy of the shard, and otherwise handed to another live node; so with
RF=2 and one node down, writes go on and each acknowledged event is on two different disks.
A shard that cannot reach W raises ``NotEnoughReplicas``; the copies already made stay, and the
client's retry under the same key stores nothing twice (replicas store each slice once).

The split is deterministic (shard = hash of producer, batch id = hash of the key), so a batch
retried through any coordinator produces the same slices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import structlog

from cluster.detector import Detector
from cluster.errors import NotEnoughReplicas, PeerError, StaleEpoch
from cluster.hints import HintStore
from cluster.membership import ClusterMap
from cluster.peers import PeerClient
from storage.shipping import pack_ipc

__all__ = ["WriteOutcome", "Writer", "quorum_short"]

log = structlog.get_logger("tributary.writer")


@dataclass
class WriteOutcome:
    accepted: int
    duplicate: bool
    stored_on: set[str] = field(default_factory=set)
    hinted: dict[str, str] = field(default_factory=dict)  # target -> node holding the hint


def quorum_short(shards: Iterable[int], sets: list[tuple[str, ...]], disks: dict[int, set[str]], w: int) -> list[int]:
    """The shards of ``shards`` with fewer than ``w`` distinct disks (capped by replica count)."""
    return [s for s in shards if len(disks.get(s, ())) < min(w, len(sets[s]))]


class Writer:
    def __init__(
        self,
        me: str,
        cmap: Callable[[], ClusterMap],
        store_local: Callable[[pa.Table, int], tuple[int, bool]],
        peers: PeerClient,
        detector: Detector,
        hints: HintStore,
        pool: Executor,
    ) -> None:
        self.me = me
        self.cmap = cmap
        self.store_local = store_local
        self.peers = peers
        self.detector = detector
        self.hints = hints
        self.pool = pool

    def split(self, rows: pa.Table, cmap: ClusterMap) -> dict[str, tuple[list[int], pa.Table]]:
        """Per node: the shards of ``rows`` it must store and their rows."""
        shard = rows.column("shard").to_numpy()
        present = np.unique(shard).tolist()
        sets = cmap.write_sets()
        per_node: dict[str, list[int]] = {}
        for s in present:
            for n in sets[s]:
                per_node.setdefault(n, []).append(s)
        out = {}
        for n, shards in per_node.items():
            if len(shards) == len(present):
                out[n] = (shards, rows)
            else:
                mask = np.isin(shard, np.asarray(shards, dtype=shard.dtype))
                out[n] = (shards, rows.filter(pa.array(mask)))
        return out

    def _send(self, node: str, part: pa.Table, epoch: int) -> tuple[int, bool]:
        if node == self.me:
            return self.store_local(part, epoch)
        if not self.detector.is_up(node):
            raise PeerError(f"{node} is down", node)
        try:
            got = self.peers.ingest(node, pack_ipc(part), epoch=epoch)
        except PeerError as e:
            if e.status == 0:
                self.detector.suspect(node)
            if e.status == 409 and isinstance(e.body, dict):
                raise StaleEpoch(str(e.detail), int(e.body.get("epoch", 0))) from e
            raise
        return int(got.get("accepted", 0)), bool(got.get("duplicate", False))

    def write(self, rows: pa.Table) -> WriteOutcome:
        """Store ``rows`` (stored schema, one batch id) on W disks per shard, or raise."""
        cmap = self.cmap()
        w = cmap.w
        sets = cmap.write_sets()
        parts = self.split(rows, cmap)
        present = sorted({s for shards, _ in parts.values() for s in shards})
        futures = {n: self.pool.submit(self._send, n, part, cmap.epoch) for n, (_, part) in parts.items()}
        ok: dict[str, bool] = {}
        failed: list[str] = []
        for n, fut in futures.items():
            try:
                _, dup = fut.result()
                ok[n] = dup
            except StaleEpoch:
                raise
            except Exception as e:
                if n == self.me:  # our own store failed (overloaded, disk): answer that, hint nothing
                    raise
                log.warning("replica missed a write", replica=n, error=str(e)[:200])
                failed.append(n)
        disks: dict[int, set[str]] = {s: {n for n in sets[s] if n in ok} for s in present}
        out = WriteOutcome(rows.num_rows, bool(ok) and all(ok.values()) and not failed, set(ok))
        if failed:
            self._hint(failed, parts, sets, disks, w, cmap, out)
        short = quorum_short(present, sets, disks, w)
        if short:
            raise NotEnoughReplicas(
                f"{len(short)} shard(s) could not be stored on {w} nodes (down: {', '.join(sorted(failed))}); "
                "retry with the same Idempotency-Key",
                retry_after=1.0,
            )
        return out

    def _hint(
        self,
        failed: list[str],
        parts: dict[str, tuple[list[int], pa.Table]],
        sets: list[tuple[str, ...]],
        disks: dict[int, set[str]],
        w: int,
        cmap: ClusterMap,
        out: WriteOutcome,
    ) -> None:
        # Our own disk first: it counts for every shard it does not already hold a copy of.
        for target in failed:
            shards, part = parts[target]
            try:
                self.hints.add(target, part)
            except OSError:
                log.exception("could not write a hint", target=target)
                continue
            out.hinted[target] = self.me
            for s in shards:
                disks[s].add(self.me)
        # Shards still short (we are a replica of them): hand the hint to another live node.
        short = quorum_short(sorted(disks), sets, disks, w)
        if not short:
            return
        helpers = [
            m.node_id
            for m in cmap.members
            if m.node_id != self.me and m.node_id not in failed and self.detector.is_up(m.node_id)
        ]
        for helper in helpers:
            todo = [s for s in short if helper not in disks[s]]
            if not todo:
                continue
            try:
                for target in failed:
                    shards, part = parts[target]
                    mine = [s for s in todo if s in shards]
                    if not mine:
                        continue
                    shard_col = part.column("shard").to_numpy()
                    sub = part.filter(pa.array(np.isin(shard_col, np.asarray(mine, dtype=shard_col.dtype))))
                    self.peers.store_hint(helper, target, pack_ipc(sub))
                    out.hinted[target] = helper
            except PeerError as e:
                if e.status == 0:
                    self.detector.suspect(helper)
                continue
            for s in todo:
                disks[s].add(helper)
            short = quorum_short(short, sets, disks, w)
            if not short:
                return
