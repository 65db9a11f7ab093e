"""Errors of the cluster layer. HTTP status codes for them are chosen in ``web/``, not here."""

from __future__ import annotations

from storage.errors import TributaryError

__all__ = [
    "ClusterError",
    "MembershipError",
    "NotEnoughReplicas",
    "NotServing",
    "PartialResult",
    "PeerError",
    "StaleEpoch",
]


class ClusterError(TributaryError):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotEnoughReplicas(ClusterError):
    """Fewer than W replicas (hints included) could take the write; nothing was acknowledged.
    Retry with the same Idempotency-Key once nodes are back."""

    def __init__(self, detail: str, retry_after: float = 1.0) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class PartialResult(ClusterError):
    """Some shards have no live replica and the caller asked for ``strict`` answers."""

    def __init__(self, detail: str, missing_shards: list[int]) -> None:
        super().__init__(detail)
        self.missing_shards = missing_shards


class MembershipError(ClusterError):
    """A cluster map or a membership change is invalid (unknown node, duplicate id, bad peer
    list, a change while another is running). Fix the request; the map is unchanged."""


class StaleEpoch(ClusterError):
    """The caller routed by an older cluster map than this node's; it should fetch the map
    (``GET /internal/map``) and route again. Nothing was done."""

    def __init__(self, detail: str, epoch: int) -> None:
        super().__init__(detail)
        self.epoch = epoch


class NotServing(ClusterError):
    """This node is catching up after a start or a stall and does not answer reads yet; ask
    another replica."""


class PeerError(ClusterError):
    """A peer did not answer in time, refused the connection or answered an error. ``node_id``
    names it; ``status`` is its HTTP status (0 when there was no answer)."""

    def __init__(self, detail: str, node_id: str, status: int = 0, body: object = None) -> None:
        super().__init__(detail)
        self.node_id = node_id
        self.status = status
        self.body = body
