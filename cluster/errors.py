"""Errors of the cluster layer."""

from __future__ import annotations

from storage.errors import TributaryError

__all__ = ["ClusterError", "NotEnoughReplicas", "PartialResult"]


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
