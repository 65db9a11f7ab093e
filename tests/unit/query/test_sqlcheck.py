"""query.sqlcheck alone: refusals name what they found, only its own errors escape, and what it
passes DuckDB's own parser reads as one query. Escape attempts against the whole sandbox, the
check included, are in test_sandbox.py."""

from __future__ import annotations

import contextlib

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from query.errors import InvalidQuery, SqlNotAllowed
from query.sqlcheck import check_sql


def test_refusal_names_what_was_found() -> None:
    with pytest.raises(SqlNotAllowed, match="COPY"):
        check_sql("COPY events TO '/tmp/x'")
    with pytest.raises(SqlNotAllowed, match="read_csv"):
        check_sql("SELECT * FROM read_csv('/etc/passwd')")
    with pytest.raises(SqlNotAllowed, match="found 2"):
        check_sql("SELECT 1; -- x\nDROP VIEW events")
    with pytest.raises(SqlNotAllowed, match="getenv"):
        check_sql("SELECT getenv('HOME')")
    with pytest.raises(InvalidQuery, match="parse"):
        check_sql("SELECT * FROM (")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_check_sql_raises_only_its_own_errors(sql: str) -> None:
    with contextlib.suppress(SqlNotAllowed, InvalidQuery):
        check_sql(sql)


WORDS = [
    "SELECT", "FROM", "events", "WHERE", ";", "--", "/*", "*/", "'", "(", ")", "1", "x", ",", "AS", "\n",
    "COPY", "TO", "read_csv", "'/etc/passwd'", "DROP", "VIEW", "ATTACH", "SET", "PRAGMA", "INSERT INTO events",
    "VALUES", "LOAD", "EXPLAIN", "ANALYZE", "WITH t AS (SELECT 1)", "t", "DESCRIBE", "CREATE TABLE", "INTO",
]  # fmt: skip
_ORACLE = duckdb.connect(config={"autoload_known_extensions": False, "enable_external_access": False})


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=14))
def test_what_check_sql_passes_duckdb_parses_as_one_query(words: list[str]) -> None:
    """The two parsers disagree nowhere that matters: a statement the sqlglot check accepts is, to
    DuckDB's own parser, one SELECT (or EXPLAIN of one), or no valid SQL at all."""
    sql = " ".join(words)
    try:
        check_sql(sql)
    except (SqlNotAllowed, InvalidQuery):
        return
    try:
        statements = _ORACLE.extract_statements(sql)
    except duckdb.Error:
        return
    assert len(statements) == 1
    assert statements[0].type in (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN)
