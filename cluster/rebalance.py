"""Membership changes: a node joins or leaves while the cluster keeps serving, exactly.

``join`` adds the node as ``joining`` and ``leave`` marks one ``leaving``, each under the next
epoch, pushed to every node. From then on writes go to the owners before and after the change,
reads still go to the owners before it, and every node hands the shards it holds to their new
owners (``Repairer.round``). The **driver** — the up, active member with the lowest id, so the
change completes even if the node that started it dies — polls every node's status and, once
all report the new epoch with nothing left to hand off, publishes the settled map (joining ->
active, leaving -> gone). Only then do reads move, and only then do old owners evict what they
gave away, each after the new owners confirmed it under the settled epoch.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import structlog

from cluster.detector import Detector
from cluster.errors import MembershipError, PeerError
from cluster.membership import ACTIVE, JOINING, LEAVING, ClusterMap, Member
from cluster.peers import PeerClient

__all__ = ["Rebalancer", "valid_node_id"]

log = structlog.get_logger("tributary.rebalance")

_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def valid_node_id(node_id: str) -> str:
    if not _NODE_ID.match(node_id):
        raise MembershipError(f"node id {node_id!r} must be 1-64 of A-Z a-z 0-9 _ . - (starting alphanumeric)")
    return node_id


class Rebalancer:
    def __init__(
        self,
        me: str,
        cmap: Callable[[], ClusterMap],
        publish: Callable[[ClusterMap], None],
        peers: PeerClient,
        detector: Detector,
        local_status: Callable[[], dict[str, Any]],
    ) -> None:
        self.me = me
        self.cmap = cmap
        self.publish = publish
        self.peers = peers
        self.detector = detector
        self.local_status = local_status
        self.settled_epochs: list[int] = []

    def join(self, node_id: str, url: str) -> ClusterMap:
        """Start adding ``node_id`` (listening at ``url``); returns the map now published."""
        cmap = self.cmap()
        valid_node_id(node_id)
        if not url.startswith(("http://", "https://")):
            raise MembershipError(f"url {url!r} must start with http:// or https://")
        if cmap.in_transition:
            raise MembershipError("another membership change is still running; wait until it completes")
        if cmap.member(node_id) is not None:
            raise MembershipError(f"node {node_id!r} is already a member")
        new = cmap.with_member(Member(node_id, url.rstrip("/"), JOINING))
        self.publish(new)
        log.info("node joining", node=node_id, epoch=new.epoch)
        return new

    def leave(self, node_id: str) -> ClusterMap:
        """Start removing ``node_id``; its shards are handed to the remaining nodes first."""
        cmap = self.cmap()
        m = cmap.member(node_id)
        if m is None:
            raise MembershipError(f"node {node_id!r} is not a member")
        if cmap.in_transition:
            raise MembershipError("another membership change is still running; wait until it completes")
        if sum(1 for x in cmap.members if x.state == ACTIVE) < 2:
            raise MembershipError("the last node cannot leave")
        new = cmap.with_member(replace(m, state=LEAVING))
        self.publish(new)
        log.info("node leaving", node=node_id, epoch=new.epoch)
        return new

    def is_driver(self, cmap: ClusterMap) -> bool:
        up = [m.node_id for m in cmap.members if m.state == ACTIVE and self.detector.is_up(m.node_id)]
        return bool(up) and min(up) == self.me

    def drive(self) -> bool:
        """One step of a running change; publishes the settled map once every node is done."""
        cmap = self.cmap()
        if not cmap.in_transition or not self.is_driver(cmap):
            return False
        for m in cmap.members:
            if m.node_id == self.me:
                st = self.local_status()
            elif not self.detector.is_up(m.node_id):
                if m.state == JOINING:
                    return False  # the new node must be there to take its shards
                continue  # a down node's data is on its co-replicas, which hand it off
            else:
                try:
                    st = self.peers.status(m.node_id)
                except PeerError:
                    return False
            if int(st.get("epoch", 0)) < cmap.epoch or int(st.get("pending", 1)) > 0:
                return False
        settled = cmap.settled()
        self.publish(settled)
        self.settled_epochs.append(settled.epoch)
        log.info("membership change complete", epoch=settled.epoch, nodes=settled.node_ids)
        return True
