"""Read-only SQL over one node's data, for people we do not trust (``POST /v1/sql``).

Three layers, each of which holds on its own (issue 6):

1. ``check_sql`` (``query.sqlcheck``, sqlglot, pure): one read-only statement over the allowed
   views, calling allowed functions only.
2. ``open_connection`` + ``parse_statement`` (DuckDB itself): a fresh in-memory database per query
   with *no* file access at all — not even to the node's data directory, because DuckDB's
   ``allowed_directories`` / ``allowed_paths`` grant writes too (``COPY … TO`` an allowed path
   overwrites it). The node's Parquet parts reach the query as pyarrow datasets
   (``register_parquet``), read by pyarrow, never by DuckDB. Extensions, Python replacement scans
   and spilling are off and the configuration is locked, so ``SET`` / ``RESET`` / ``PRAGMA`` and the
   setting-changing table functions fail. DuckDB's own parser must also see one SELECT or EXPLAIN.
3. ``Sandbox``: a watchdog interrupts the query at its time limit (``QueryTimeout``) or on
   ``cancel`` (``QueryCancelled``); results are streamed and cut at the row (and byte) cap, so a
   huge result is never materialised.

What no layer here can stop: a single scalar call that allocates outside DuckDB's memory accounting
is neither interruptible nor bounded by ``memory_limit`` (``repeat('x', 3e9)`` takes 3 GB and 30 s).
The deny-list of ``query.sqlcheck`` closes the known ones; only a separate process with an OS limit
closes the class.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa

from query.errors import InvalidQuery, QueryCancelled, QueryError, QueryTimeout, SqlNotAllowed
from query.sqlcheck import DEFAULT_VIEWS, check_sql

if TYPE_CHECKING:
    import pyarrow.dataset as pads

__all__ = [
    "DEFAULT_VIEWS",
    "Sandbox",
    "SandboxConfig",
    "SqlResult",
    "SqlStream",
    "ViewDefiner",
    "check_sql",
    "open_connection",
    "parse_statement",
    "register_parquet",
]

ViewDefiner = Callable[[duckdb.DuckDBPyConnection], None]
"""Creates the query's views on a sandboxed connection (file access already off, configuration
already locked): ``con.register(name, arrow_table_or_dataset)`` and ``CREATE VIEW … AS SELECT``."""


@dataclass(frozen=True)
class SandboxConfig:
    timeout_s: float = 10.0
    export_timeout_s: float = 600.0  # a streamed export lives as long as its slowest client
    memory_limit: str = "512MB"  # per query: each query has its own DuckDB instance
    threads: int = 2
    max_rows: int = 10_000  # rows in a JSON answer; beyond: truncated=True
    max_bytes: int = 64 << 20  # Arrow bytes in a JSON answer; one huge string cannot flood it
    max_export_rows: int = 10_000_000
    views: tuple[str, ...] = DEFAULT_VIEWS


# -- layer 2: the DuckDB connection ---------------------------------------------------------------


def open_connection(config: SandboxConfig) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB that can read no file, write no file, load no extension, see no
    Python variable and change no setting. Only what is registered on it can be queried."""
    con = duckdb.connect(
        ":memory:",
        config={
            "autoload_known_extensions": False,
            "autoinstall_known_extensions": False,
            "allow_community_extensions": False,
            "allow_unsigned_extensions": False,
            "allow_persistent_secrets": False,
            "python_enable_replacements": False,  # else FROM any_local_variable scans it
            "temp_directory": "",  # no spilling: the default ".tmp" would be an allowed directory
            "max_temp_directory_size": "0 B",
            "memory_limit": config.memory_limit,
            "threads": config.threads,
        },
    )
    try:
        # Set here, not in the dict above: given at connect, DuckDB adds "<cwd>/:memory:" and its
        # ".wal" files to allowed_paths, and COPY … TO ':memory:' then writes into the working dir.
        con.execute("SET enable_external_access = false")
        # Belt and braces: a path DuckDB were still allowed to open finds no file system at all
        # (settable only once the database runs).
        con.execute("SET disabled_filesystems = 'LocalFileSystem'")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def parse_statement(con: duckdb.DuckDBPyConnection, sql: str) -> duckdb.Statement:
    """The one statement of ``sql`` as DuckDB's own parser sees it, if it is a SELECT (which DuckDB
    reports for DESCRIBE and SUMMARIZE too) or an EXPLAIN of one; else ``SqlNotAllowed``."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise InvalidQuery(str(e)) from e
    if len(statements) != 1:
        raise SqlNotAllowed(f"one statement per request; found {len(statements)}")
    (stmt,) = statements
    if stmt.type == duckdb.StatementType.EXPLAIN:
        inner = re.sub(r"(?is)^\s*explain(\s+analyze)?\b", "", stmt.query)
        if inner == stmt.query or parse_statement(con, inner).type != duckdb.StatementType.SELECT:
            raise SqlNotAllowed("EXPLAIN is allowed of a SELECT only")
    elif stmt.type != duckdb.StatementType.SELECT:
        raise SqlNotAllowed(f"{stmt.type.name} statements are not allowed; only queries are")
    return stmt


def register_parquet(
    con: duckdb.DuckDBPyConnection, name: str, files: Sequence[str], schema: pa.Schema | None = None
) -> None:
    """Make Parquet ``files`` queryable as ``name`` on a sandboxed connection. pyarrow reads them
    (with column and filter pushdown); DuckDB never gets a path. With no files, ``schema`` is
    required and the source is empty."""
    if files:
        # Imported on first use: pyarrow.dataset loads pandas too where it is installed (~50 MiB
        # in a development environment), and a node that serves no SQL never needs it.
        import pyarrow.dataset as pads

        source: pads.Dataset | pa.Table = pads.dataset(list(files), schema=schema, format="parquet")
    elif schema is not None:
        source = schema.empty_table()
    else:
        raise ValueError("register_parquet needs a schema when there are no files")
    con.register(name, source)


# -- layer 3: limits -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SqlResult:
    """A query's rows, cut at the row and byte caps (``truncated`` says whether it was)."""

    table: pa.Table
    column_types: tuple[str, ...]  # DuckDB's names: BIGINT, VARCHAR, TIMESTAMP WITH TIME ZONE, …
    truncated: bool
    took_ms: float
    query_id: str


class _Watch:
    """Interrupts one query's connection at its deadline or on cancel, and keeps interrupting until
    the query thread says it is done: an interrupt that lands between two statements is otherwise lost."""

    def __init__(self, con: duckdb.DuckDBPyConnection, timeout_s: float) -> None:
        self.con = con
        self.reason: type[QueryError] | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(timeout_s,), name="sql-watchdog", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = QueryCancelled
        self._wake.set()

    def stop(self) -> None:
        """Called by the query thread before it closes the connection: no interrupt after this."""
        with self._lock:
            self._done.set()
        self._wake.set()
        self._thread.join()

    def _run(self, timeout_s: float) -> None:
        self._wake.wait(timeout_s)
        with self._lock:
            if self._done.is_set():
                return
            if self.reason is None:
                self.reason = QueryTimeout
        while True:
            with self._lock:
                if self._done.is_set():
                    return
                self.con.interrupt()
            self._done.wait(0.05)


class SqlStream:
    """The batches of a running query, cut at ``max_rows``; iterate once. ``truncated`` and ``rows``
    are final when the iteration ends."""

    def __init__(
        self,
        query_id: str,
        reader: pa.RecordBatchReader,
        types: tuple[str, ...],
        max_rows: int,
        guard: Callable[[], contextlib.AbstractContextManager[None]],
    ) -> None:
        self.query_id = query_id
        self.schema: pa.Schema = reader.schema
        self.column_types = types
        self.rows = 0
        self.truncated = False
        self._reader = reader
        self._max_rows = max_rows
        self._guard = guard

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        while True:
            with self._guard():
                batch = self._next()
            if batch is None:
                return
            yield batch

    def _next(self) -> pa.RecordBatch | None:
        while self.rows < self._max_rows:
            try:
                batch = self._reader.read_next_batch()
            except StopIteration:
                return None
            room = self._max_rows - self.rows
            if batch.num_rows > room:
                self.truncated = True
                batch = batch.slice(0, room)
            self.rows += batch.num_rows
            if batch.num_rows:
                return batch
        if not self.truncated:  # exactly at the cap: one more row decides whether anything was cut
            self.truncated = any(b.num_rows for b in self._reader)
        self._reader.close()
        return None


class Sandbox:
    """Runs untrusted SQL, one fresh DuckDB per query (about 15 ms to open and close)."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self._lock = threading.Lock()
        self._running: dict[str, _Watch] = {}

    def run(
        self, sql: str, define_views: ViewDefiner, *, query_id: str | None = None, max_rows: int | None = None
    ) -> SqlResult:
        """Answer ``sql`` over the views ``define_views`` creates; at most ``max_rows`` rows (never
        more than ``config.max_rows``) and ``config.max_bytes``. Raises ``SqlNotAllowed``,
        ``InvalidQuery``, ``QueryTimeout``, ``QueryCancelled``; any of them leaves nothing behind."""
        cap = self.config.max_rows if max_rows is None else max(0, min(max_rows, self.config.max_rows))
        t0 = time.perf_counter()
        with self.stream(sql, define_views, query_id=query_id, max_rows=cap, timeout_s=self.config.timeout_s) as s:
            batches: list[pa.RecordBatch] = []
            size = 0
            truncated = False
            for batch in s:
                if size + batch.nbytes > self.config.max_bytes and batches:
                    truncated = True
                    break
                batches.append(batch)
                size += batch.nbytes
            table = pa.Table.from_batches(batches, schema=s.schema)
            took = round((time.perf_counter() - t0) * 1000, 3)
            return SqlResult(table, s.column_types, truncated or s.truncated, took, s.query_id)

    @contextlib.contextmanager
    def stream(
        self,
        sql: str,
        define_views: ViewDefiner,
        *,
        query_id: str | None = None,
        max_rows: int | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[SqlStream]:
        """Open ``sql`` as a ``SqlStream`` of at most ``max_rows`` (never more than
        ``config.max_export_rows``) for an export that never holds the whole result. The time limit
        (``config.export_timeout_s`` by default) covers the whole life of the stream; errors raised
        while iterating are ``QueryError`` subclasses like those of ``run``."""
        check_sql(sql, self.config.views)
        cap = self.config.max_export_rows if max_rows is None else max(0, min(max_rows, self.config.max_export_rows))
        qid = query_id or uuid.uuid4().hex
        con = open_connection(self.config)
        watch = _Watch(con, self.config.export_timeout_s if timeout_s is None else timeout_s)
        with self._lock:
            if qid in self._running:
                watch.stop()
                con.close()
                raise InvalidQuery(f"a query with id {qid!r} is already running")
            self._running[qid] = watch
        try:
            with self._mapped(qid):
                define_views(con)
                rel = con.sql(parse_statement(con, sql))
                if rel is None:  # cannot happen for a SELECT; refuse rather than assume
                    raise SqlNotAllowed("the statement returned no rows")
                types = tuple(str(t) for t in rel.types)
                reader = rel.to_arrow_reader(min(cap + 1, 65_536))
            yield SqlStream(qid, reader, types, cap, functools.partial(self._mapped, qid))
        finally:
            with self._lock:
                self._running.pop(qid, None)
            watch.stop()
            con.close()

    def cancel(self, query_id: str) -> bool:
        """Interrupt the running query ``query_id``; False if no such query is running."""
        with self._lock:
            watch = self._running.get(query_id)
        if watch is None:
            return False
        watch.cancel()
        return True

    def running(self) -> list[str]:
        with self._lock:
            return list(self._running)

    @contextlib.contextmanager
    def _mapped(self, query_id: str) -> Iterator[None]:
        """DuckDB's errors as ours; an interrupt as the reason the watchdog recorded."""
        try:
            yield
        except QueryError:
            raise
        except Exception as e:
            with self._lock:
                watch = self._running.get(query_id)
            reason = watch.reason if watch is not None else None
            if reason is QueryTimeout:
                raise QueryTimeout(f"the query ran past its time limit and was interrupted ({e})") from e
            if reason is QueryCancelled:
                raise QueryCancelled(f"query {query_id!r} was cancelled") from e
            if isinstance(e, (duckdb.Error, pa.ArrowException)):
                raise _translate(e) from e
            raise


def _translate(e: Exception) -> QueryError:
    if isinstance(e, duckdb.PermissionException):
        return SqlNotAllowed(str(e))
    if isinstance(e, duckdb.OutOfMemoryException):
        return InvalidQuery(f"the query needs more memory than the sandbox allows; narrow it ({e})")
    if isinstance(e, duckdb.InterruptException):
        return QueryCancelled(str(e))
    if isinstance(
        e,
        (
            duckdb.ParserException,
            duckdb.BinderException,
            duckdb.CatalogException,
            duckdb.ConversionException,
            duckdb.InvalidInputException,
            duckdb.OutOfRangeException,
            duckdb.TypeMismatchException,
            duckdb.NotImplementedException,
            duckdb.SyntaxException,
            duckdb.ConstraintException,
            duckdb.DataError,
            duckdb.ProgrammingError,
        ),
    ):
        return InvalidQuery(str(e))
    return QueryError(f"the query failed: {e}")
