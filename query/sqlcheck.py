"""The statement check, the first layer of the SQL sandbox: is this one read-only query over our
views, calling allowed functions only? Pure: sqlglot parses, nothing runs.

``check_sql`` accepts one statement: SELECT / WITH / VALUES / EXPLAIN / DESCRIBE / SUMMARIZE;
tables from an allow-list of view names (plus the query's own CTEs); table functions from an
allow-list (``range``, ``generate_series``, ``unnest``); scalar, aggregate and window functions
from DuckDB's built-in catalog minus a deny-list of introspection functions and of functions
whose output size is an argument (``repeat``, ``lpad``, ``range``…, see ``_DENIED_FUNCTIONS``).
It is one of three layers that each hold on their own (``query.sandbox``): a statement it wrongly
let through still meets a DuckDB with no file access and a locked configuration.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection

import duckdb
import sqlglot
from sqlglot import Token, TokenType, exp
from sqlglot.errors import ParseError, TokenError

from query.errors import InvalidQuery, SqlNotAllowed

__all__ = ["DEFAULT_VIEWS", "check_sql"]

DEFAULT_VIEWS = ("events", "rollup_minute", "rollup_producer_hour")

_STARTS = {TokenType.SELECT, TokenType.WITH, TokenType.FROM, TokenType.VALUES, TokenType.L_PAREN}
# DuckDB statements sqlglot tokenizes as a plain word; only to name them in the refusal.
_STATEMENT_WORDS = {"CHECKPOINT", "EXPORT", "IMPORT", "DEALLOCATE"}
_TABLE_FUNCTIONS = {"range", "generate_series", "unnest"}
# Scalar names refused although DuckDB has them: they read the engine's state, run SQL from a
# string, or build an output whose size is an argument. Such output is allocated outside the
# memory limit in one uninterruptible call: measured 3 GB for repeat('x', 3e9), 14 GB for
# len(range(2e8)), |s|² for replace(s, 'x', s).
_DENIED_FUNCTIONS = {
    "current_setting", "getenv", "getvariable", "write_log", "json_serialize_sql",
    "json_deserialize_sql", "json_execute_serialized_sql", "parse_duckdb_log_message",
    "repeat", "lpad", "rpad", "pad", "space", "printf", "format", "bar", "bitstring",
    "list_resize", "array_resize", "replace", "regexp_replace", "list_reduce", "array_reduce",
    "reduce", "range", "generate_series", "read_csv", "read_parquet", "to_file", "secret",
}  # fmt: skip
_DENIED_NODES = (exp.Into, exp.Command, exp.DML, exp.DDL, exp.Set, exp.Pragma, exp.Transaction, exp.Use)
_SCHEMAS = {"", "main"}
_CATALOGS = {"", "memory"}
_DIALECT = sqlglot.Dialect.get_or_raise("duckdb")


@functools.cache
def _builtin_functions() -> frozenset[str]:
    """Scalar, aggregate, window and macro names of DuckDB's own catalog (no extension loaded)."""
    con = duckdb.connect(config={"autoload_known_extensions": False, "autoinstall_known_extensions": False})
    try:
        rows = con.sql(
            "SELECT DISTINCT lower(function_name) FROM duckdb_functions() "
            "WHERE function_type IN ('scalar', 'aggregate', 'window', 'macro')"
        ).fetchall()
    finally:
        con.close()
    return frozenset(r[0] for r in rows) - _DENIED_FUNCTIONS


def _statements(tokens: list[Token]) -> list[list[Token]]:
    groups: list[list[Token]] = [[]]
    for tok in tokens:
        if tok.token_type == TokenType.SEMICOLON:
            groups.append([])
        else:
            groups[-1].append(tok)
    return [g for g in groups if g]


def check_sql(sql: str, views: Collection[str] = DEFAULT_VIEWS) -> None:
    """Raise unless ``sql`` is one read-only query over ``views`` using allowed functions only.

    ``SqlNotAllowed`` names what was found; ``InvalidQuery`` carries sqlglot's parse message.
    Pure: touches nothing but its argument (and, once per process, DuckDB's function catalog).
    """
    try:
        tokens = _DIALECT.tokenize(sql)
    except TokenError as e:
        raise InvalidQuery(f"cannot parse the SQL: {e}") from e
    statements = _statements(tokens)
    if not statements:
        raise InvalidQuery("the SQL is empty")
    if len(statements) > 1:
        raise SqlNotAllowed(f"one statement per request; found {len(statements)}")
    first = statements[0][0]
    word = first.text.upper()
    if word == "EXPLAIN":
        inner = re.sub(r"(?is)^\s*analyze\b", "", sql[first.end + 1 :])
        return _check_parsed(_parse(inner), views, explain=True)
    if first.token_type == TokenType.VAR and word not in _STATEMENT_WORDS:
        raise InvalidQuery(f"cannot parse the SQL: {first.text!r} does not begin a statement")
    if first.token_type not in _STARTS | {TokenType.DESCRIBE, TokenType.SUMMARIZE}:
        raise SqlNotAllowed(
            f"{word} statements are not allowed; only SELECT, WITH, EXPLAIN, DESCRIBE and SUMMARIZE are"
        )
    _check_parsed(_parse(sql), views, explain=False)


def _parse(sql: str) -> exp.Expr:
    try:
        trees = [t for t in sqlglot.parse(sql, dialect=_DIALECT) if t is not None and not isinstance(t, exp.Semicolon)]
    except (ParseError, TokenError) as e:
        raise InvalidQuery(f"cannot parse the SQL: {e}") from e
    except RecursionError as e:
        raise InvalidQuery("the SQL is nested too deeply") from e
    if len(trees) != 1:
        raise SqlNotAllowed(f"one statement per request; found {len(trees)}")
    return trees[0]


def _check_parsed(tree: exp.Expr, views: Collection[str], *, explain: bool) -> None:
    allowed_top: tuple[type[exp.Expr], ...] = (exp.Query, exp.Values)
    if not explain:
        allowed_top += (exp.Describe, exp.Summarize)
    if not isinstance(tree, allowed_top):
        raise SqlNotAllowed(f"{tree.key.upper()} statements are not allowed; only queries are")
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    names = {v.lower() for v in views} | ctes
    for node in tree.walk():
        if isinstance(node, _DENIED_NODES):
            raise SqlNotAllowed(f"{node.key.upper()} is not allowed in a read-only query")
        if isinstance(node, exp.Table):
            _check_table(node, names)
        elif isinstance(node, exp.Func):
            _check_function(node)


def _check_table(node: exp.Table, names: set[str]) -> None:
    if isinstance(node.this, exp.Func):
        name = _function_name(node.this)
        if name not in _TABLE_FUNCTIONS:
            raise SqlNotAllowed(f"table function {name}() is not allowed; only {sorted(_TABLE_FUNCTIONS)} are")
        return
    if not isinstance(node.this, exp.Identifier):
        raise SqlNotAllowed(f"this table source is not allowed: {node.sql(dialect=_DIALECT)[:80]}")
    if node.catalog.lower() not in _CATALOGS or node.db.lower() not in _SCHEMAS or node.name.lower() not in names:
        raise SqlNotAllowed(f"unknown table {node.sql(dialect=_DIALECT)[:80]}; the tables are {sorted(names)}")


def _function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    return type(node).sql_names()[0].lower()


def _check_function(node: exp.Func) -> None:
    if isinstance(node, exp.Anonymous):
        name = str(node.name).lower()
        if name not in _builtin_functions():
            raise SqlNotAllowed(f"function {name}() is not allowed")
        return
    # A function sqlglot models (count, date_trunc, …): refuse the few that touch files or whose
    # output size is an argument; a series is fine as a table (streamed, interruptible), not as a list.
    denied = {n.lower() for n in type(node).sql_names()} & _DENIED_FUNCTIONS
    if isinstance(node, (exp.GenerateSeries, exp.ExplodingGenerateSeries)) and isinstance(node.parent, exp.Table):
        denied = set()
    if denied:
        raise SqlNotAllowed(f"function {sorted(denied)[0]}() is not allowed")
