"""Scatter-gather reads: one live replica per shard, each node asked for its shard list, merged.

The coordinator picks for every shard a replica that is up and serving (itself first, then the
least loaded by this query), sends each chosen node the list of its shards, and merges: counts
and sums add up; top-k lists are merged exactly, because a producer lives in one shard, so each
node's local top-k over its shards holds every producer of the global top-k it could supply.
A node that fails or does not answer within the timeout has its shards moved to another replica
in the next round; a shard left with none is reported missing (``partial``), never guessed.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog

from cluster.detector import Detector
from cluster.errors import PeerError
from cluster.membership import ClusterMap
from cluster.peers import PeerClient
from query.engine import Aggregate, TopEntry

__all__ = ["Gathered", "Reader", "merge_aggregates", "merge_topk", "plan"]

log = structlog.get_logger("tributary.reader")

T = TypeVar("T")

Plan = tuple[dict[str, list[int]], list[int]]

# A read's first round is planned over every shard, from the map and which nodes are eligible;
# the same inputs give one of a few plans (the planner breaks ties at random), so each map
# keeps this many per set of eligible nodes and a read takes one at random: a coordinator
# still spreads its reads over tied replicas, and no read pays for planning 256 shards
# (~0.2 ms of Python per read, measured with py-spy).
PLAN_VARIANTS = 4


@dataclass(frozen=True)
class Gathered(Generic[T]):
    parts: list[T]
    missing: tuple[int, ...]
    asked: dict[str, list[int]]  # node -> shards it answered for


def merge_aggregates(parts: Sequence[Aggregate]) -> Aggregate:
    return Aggregate(sum(p.count for p in parts), sum(p.sum for p in parts))


def merge_topk(parts: Sequence[Sequence[TopEntry]], k: int) -> list[TopEntry]:
    """The global top-k from per-node top-k lists over disjoint shard sets (count desc, id asc)."""
    totals: dict[str, int] = {}
    for part in parts:
        for e in part:
            totals[e.producer_id] = totals.get(e.producer_id, 0) + e.count
    ranked = sorted(totals.items(), key=lambda pc: (-pc[1], pc[0]))
    return [TopEntry(p, c) for p, c in ranked[:k]]


def plan(
    shards: Sequence[int],
    candidates: Callable[[int], Sequence[str]],
    prefer: str,
    rng: random.Random | None = None,
) -> Plan:
    """Assign each shard to one of its candidates, asking as few nodes as possible: ``prefer``
    (ourselves) takes every shard it can, then repeatedly the node that can take the most of
    the rest (a random one of those tied, so coordinators spread their load). Fewer nodes per
    read means fewer requests and a shorter tail. Returns (node -> shards, missing)."""
    rng = rng or _rng
    cands = {s: list(candidates(s)) for s in shards}
    missing = [s for s, c in cands.items() if not c]
    left = {s for s, c in cands.items() if c}
    out: dict[str, list[int]] = {}
    while left:
        cover: dict[str, list[int]] = {}
        for s in sorted(left):
            for n in cands[s]:
                cover.setdefault(n, []).append(s)
        if prefer in cover:
            pick = prefer
        else:
            best = max(len(v) for v in cover.values())
            pick = rng.choice(sorted(n for n, v in cover.items() if len(v) == best))
        out[pick] = cover[pick]
        left -= set(cover[pick])
    return out, missing


_rng = random.Random()


class Reader:
    def __init__(
        self,
        me: str,
        cmap: Callable[[], ClusterMap],
        peers: PeerClient,
        detector: Detector,
        pool: Executor,
        serving: Callable[[], bool],
        timeout_s: float,
        on_stale: Callable[[str], None] | None = None,
        hinted: Callable[[str], int] = lambda _: 0,
    ) -> None:
        self.me = me
        self.cmap = cmap
        self.peers = peers
        self.detector = detector
        self.pool = pool
        self.serving = serving
        self.timeout_s = timeout_s
        self.on_stale = on_stale
        self.hinted = hinted
        self._replicas_cache: tuple[ClusterMap, list[tuple[str, ...]], frozenset[str]] | None = None
        self._plans: tuple[ClusterMap, dict[frozenset[str], list[Plan | None]]] | None = None

    def _replicas(self, cmap: ClusterMap) -> tuple[list[tuple[str, ...]], frozenset[str]]:
        """Every shard's read replicas, and every node among them: computed once per map (a
        read plans over all shards)."""
        cached = self._replicas_cache
        if cached is None or cached[0] is not cmap:
            replicas = [cmap.read_replicas(s) for s in range(cmap.shards)]
            cached = self._replicas_cache = (cmap, replicas, frozenset(n for r in replicas for n in r))
        return cached[1], cached[2]

    def _first_plan(self, cmap: ClusterMap, eligible: frozenset[str]) -> Plan:
        """A plan over every shard of ``cmap`` among the ``eligible`` nodes: one of
        ``PLAN_VARIANTS`` kept for these inputs, each made once (copies: callers own them)."""
        cached = self._plans
        if cached is None or cached[0] is not cmap:
            cached = self._plans = (cmap, {})
        variants = cached[1].setdefault(eligible, [None] * PLAN_VARIANTS)
        i = _rng.randrange(PLAN_VARIANTS)
        made = variants[i]
        if made is None:
            replicas, _ = self._replicas(cmap)
            made = variants[i] = plan(
                range(cmap.shards), lambda s: [n for n in replicas[s] if n in eligible], self.me, random.Random(i)
            )
        assignment, missing = made
        return {n: list(shards) for n, shards in assignment.items()}, list(missing)

    def _eligible(self, node: str) -> bool:
        if node == self.me:
            return self.serving()
        # A peer we still hold hints for has missed writes: not read from until they land.
        return self.detector.is_serving(node) and not self.hinted(node)

    def gather(
        self,
        request: dict[str, Any],
        local: Callable[[list[int]], T],
        decode: Callable[[dict[str, Any]], T],
        *,
        reroute: bool = True,
    ) -> Gathered[T]:
        """Run ``request`` over every shard: ``local(shards)`` here, ``/internal/query`` there.
        When a peer says our map is stale, the map is refreshed and the read routed again once."""
        cmap = self.cmap()
        stale = False
        tried: dict[int, set[str]] = {}
        replicas, replica_nodes = self._replicas(cmap)
        eligible: dict[str, bool] = {}  # per round: asked once per node, not once per shard

        def candidates(s: int) -> list[str]:
            out = []
            for n in replicas[s]:
                ok = eligible.get(n)
                if ok is None:
                    ok = eligible[n] = self._eligible(n)
                if ok and n not in tried.get(s, ()):
                    out.append(n)
            return out

        todo = list(range(cmap.shards))
        parts: list[T] = []
        asked: dict[str, list[int]] = {}
        missing: list[int] = []
        for round_ in range(max(1, cmap.rf) + 1):
            eligible.clear()
            if round_ == 0:  # every shard, nothing tried yet: depends on who is eligible only
                nodes = frozenset(n for n in replica_nodes if self._eligible(n))
                assignment, lost = self._first_plan(cmap, nodes)
            else:
                assignment, lost = plan(todo, candidates, self.me)
            missing += lost
            if not assignment:
                break
            # Peers' queries are sent first, then our own share runs in this thread while they
            # work, then their answers are read: no hop to a pool thread and back.
            results: list[tuple[str, Callable[[], T]]] = []
            for node, shards in assignment.items():
                for s in shards:
                    tried.setdefault(s, set()).add(node)
                if node == self.me:
                    results.insert(0, (node, functools.partial(local, shards)))
                else:
                    results.append(
                        (node, self._start(node, {**request, "shards": shards, "epoch": cmap.epoch}, decode))
                    )
            todo = []
            for node, result in results:
                try:
                    parts.append(result())
                    asked[node] = assignment[node]
                except Exception as e:
                    log.info("replica failed a read; trying another", replica=node, error=str(e)[:200])
                    stale = stale or (isinstance(e, PeerError) and e.status == 409)
                    todo += assignment[node]
            if not todo:
                break
        missing += todo
        if stale and reroute and self.cmap().epoch > cmap.epoch:
            return self.gather(request, local, decode, reroute=False)
        return Gathered(parts, tuple(sorted(set(missing))), asked)

    def _start(self, node: str, body: dict[str, Any], decode: Callable[[dict[str, Any]], T]) -> Callable[[], T]:
        """Send ``body`` to ``node`` now; the returned call reads and decodes its answer."""
        try:
            pending = self.peers.start_query(node, body, timeout=self.timeout_s)
        except Exception as e:  # e.g. a node the map no longer names: a failed read like any other
            error = e

            def failed() -> T:
                raise error

            return failed

        def finish() -> T:
            try:
                return decode(pending.result())
            except PeerError as e:
                if e.status == 0:
                    self.detector.suspect(node)
                elif e.status == 503:
                    self.detector.not_serving(node)
                elif e.status == 409 and self.on_stale is not None:
                    self.on_stale(node)
                raise

        return finish
