"""Reading a JSON or NDJSON ingest body into Arrow columns with DuckDB's JSON reader.

``ingest.decode`` is exact but decodes with msgspec and builds its columns from Python objects,
about 0.8 µs of CPU per event with the GIL held: with a request thread per core, JSON ingest was
capped by the GIL, not by the cores. DuckDB's reader (yyjson, in C++) does the same work with the
GIL released, in about half the CPU, so two requests decode side by side.

DuckDB's reader is lenient where the ingest contract is strict: it rounds ``1.5`` into a BIGINT,
reads ``true`` and ``"12"`` as integers and ``5`` as a string. So the reader keeps each field as
its JSON text, and the scan keeps a row only if that text is what the contract allows: an integer
written as a JSON integer (no fraction, no exponent; the text round-trips through BIGINT), a
string written as a JSON string. ``scan`` returns None whenever it cannot vouch for a body: any
row outside that shape (a null, a missing field, an RFC 3339 timestamp, a float), a body DuckDB
cannot read, or no rows at all. The caller then decodes with msgspec, which accepts what the
contract accepts and names the first offending event for everything else. Values still go
through ``ingest.decode``'s column checks (time window, string lengths, NUL) either way.

The reader reads files, so the body is first written to an anonymous in-memory file
(``memfd_create``, read back through ``/proc/self/fd``; nothing is left behind if the process
dies), or to a temporary file where there is no such call. Each thread has its own cursor of one
in-memory DuckDB.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator

import duckdb
import pyarrow as pa

__all__ = ["scan"]

# Each field is read as its JSON text. An integer's text is canonical when it round-trips through
# BIGINT (no sign, no leading zero, no fraction, no exponent); a string's text starts with a quote,
# and is sliced when it holds no escape (the common case), else unescaped by DuckDB.
_SQL = """
WITH raw AS (
    SELECT timestamp::VARCHAR AS t, category::VARCHAR AS c, value::VARCHAR AS v, producer_id::VARCHAR AS p
    FROM read_json(
        $path,
        columns = {timestamp: 'JSON', category: 'JSON', value: 'JSON', producer_id: 'JSON'},
        format = $format
    )
), typed AS (
    SELECT TRY_CAST(t AS BIGINT) AS ts, t, c, TRY_CAST(v AS BIGINT) AS val, v, p FROM raw
)
SELECT
    CASE WHEN ts::VARCHAR = t THEN ts END AS timestamp,
    CASE WHEN NOT prefix(c, '"') THEN NULL WHEN contains(c, '\\') THEN c ->> '$' ELSE c[2:-2] END AS category,
    CASE WHEN val::VARCHAR = v THEN val END AS value,
    CASE WHEN NOT prefix(p, '"') THEN NULL WHEN contains(p, '\\') THEN p ->> '$' ELSE p[2:-2] END AS producer_id
FROM typed
"""

_db: duckdb.DuckDBPyConnection | None = None
_lock = threading.Lock()
_local = threading.local()


def scan(data: bytes | bytearray | memoryview, *, ndjson: bool) -> pa.Table | None:
    """The body's events as a table of timestamp, category, value, producer_id (in body order),
    or None if the body is not plainly well-formed (see the module docstring)."""
    cursor = _cursor()
    with _spooled(data) as path:
        try:
            params = {"path": path, "format": "newline_delimited" if ndjson else "array"}
            table = cursor.sql(_SQL, params=params).to_arrow_table()
        except (duckdb.Error, UnicodeDecodeError):  # DuckDB's message may quote the bad bytes
            return None
    if table.num_rows == 0 or any(col.null_count for col in table.columns):
        return None
    return table


@contextlib.contextmanager
def _spooled(data: bytes | bytearray | memoryview) -> Iterator[str]:
    """A path DuckDB can open that holds ``data``, for as long as the block runs."""
    if hasattr(os, "memfd_create"):
        with open(os.memfd_create("tributary-ingest"), "wb") as f:
            f.write(data)
            f.flush()
            yield f"/proc/self/fd/{f.fileno()}"
        return
    with tempfile.NamedTemporaryFile(prefix="tributary-ingest-", suffix=".json") as t:
        t.write(data)
        t.flush()
        yield t.name


def _cursor() -> duckdb.DuckDBPyConnection:
    cursor: duckdb.DuckDBPyConnection | None = getattr(_local, "cursor", None)
    if cursor is None:
        global _db
        with _lock:
            if _db is None:
                _db = duckdb.connect(config={"threads": 1, "memory_limit": "256MB"})
            cursor = _db.cursor()
        _local.cursor = cursor
    return cursor
