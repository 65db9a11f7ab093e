"""Errors of the write path. HTTP status codes for them are chosen in ``web/``, not here."""

from __future__ import annotations

from storage.errors import TributaryError

__all__ = [
    "BatchRejected",
    "IdempotencyConflict",
    "IngestError",
    "MalformedBody",
    "Overloaded",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "WalCorrupt",
]


class IngestError(TributaryError):
    """Something on the write path went wrong."""


class BatchRejected(IngestError):
    """The batch is invalid as a whole; nothing of it was stored. Fix the named row and field
    and send the whole batch again.

    ``row`` is the 0-based index of the first offending event (None when the body as a whole is
    at fault), ``field`` the offending field name (None when not about one field).
    """

    def __init__(self, detail: str, *, row: int | None = None, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.row = row
        self.field = field


class MalformedBody(BatchRejected):
    """The body cannot be parsed at all (bad JSON, corrupt Arrow stream, bad compression)."""


class UnsupportedMediaType(BatchRejected):
    """The Content-Type or Content-Encoding is not one Tributary reads; use application/json,
    application/x-ndjson or application/vnd.apache.arrow.stream, optionally gzip or zstd."""


class PayloadTooLarge(BatchRejected):
    """The body (or its decompressed form, or its row count) exceeds a configured limit; split
    the batch."""


class IdempotencyConflict(BatchRejected):
    """The Idempotency-Key was used before with a different body. Use a fresh key for new data."""


class Overloaded(IngestError):
    """The node cannot take more writes right now (buffer full, persisting behind, too many
    concurrent requests). Retry after ``retry_after`` seconds; nothing of the batch was stored."""

    def __init__(self, detail: str, *, retry_after: float = 1.0) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class WalCorrupt(IngestError):
    """A WAL segment is damaged before its tail (a torn tail is cut silently). Move the named
    segment aside and restart; its events must be recovered from a replica."""
