"""Errors of the read path. HTTP status codes for them are chosen in ``web/``, not here."""

from __future__ import annotations

from storage.errors import TributaryError

__all__ = ["InvalidQuery", "QueryCancelled", "QueryError", "QueryTimeout", "SqlNotAllowed", "SqlNotSplittable"]


class QueryError(TributaryError):
    """A query could not be answered."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidQuery(QueryError):
    """The query's parameters or SQL are wrong (range, k, unknown column, syntax); fix and resend."""


class SqlNotAllowed(QueryError):
    """The SQL tries something the read-only sandbox forbids (writes, files, settings,
    extensions, several statements). Only one SELECT / WITH / EXPLAIN statement is allowed."""


class SqlNotSplittable(QueryError):
    """A cluster-wide SQL query that cannot be split into per-node and merge parts (window
    functions, joins, subqueries, aggregates that do not merge); the detail says why. Run it
    with ``"scope": "node"`` on one node's data, or rewrite it."""


class QueryTimeout(QueryError):
    """The query ran past its time limit and was interrupted; narrow the range or raise the
    limit (``--query-timeout``)."""


class QueryCancelled(QueryError):
    """The query was cancelled by its caller."""
