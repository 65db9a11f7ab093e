"""Splitting one SQL query into a per-node part and a merge part, for cluster-wide SQL.

A cluster answers ``POST /v1/sql`` by sending every node the *per-node part* over the shards it
is asked for (views restricted to those shards), concatenating the partial results into a table
``partials``, and running the *merge part* over it. Pure: sqlglot rewrites, nothing runs here.

What splits (anything else raises ``SqlNotSplittable``, which names the reason and suggests
``"scope": "node"``): one ``SELECT`` over one view, with

- ``WHERE``, projections, ``DISTINCT``: pushed to the nodes as they are;
- ``GROUP BY`` (expressions, ordinals, aliases, ``ALL``) with ``count``, ``sum``, ``min``, ``max``
  and ``avg`` (merged as ``sum / count``), each optionally with ``FILTER (WHERE …)``, and
  ``count(DISTINCT producer_id)`` / ``count(DISTINCT shard)``: exact as a sum, because a producer
  lives in one shard and every shard is read on exactly one node, so per-node distinct sets are
  disjoint; ``HAVING`` is applied after the merge;
- ``ORDER BY``, ``LIMIT``, ``OFFSET``: applied after the merge; for queries without aggregates the
  nodes also get ``ORDER BY … LIMIT limit + offset`` (each of the global first rows is among the
  first rows of the node holding it), and the row cap of the answer bounds that limit too.

Queries that read no view (``SELECT 1``, ``DESCRIBE events``, ``EXPLAIN …``) need no split: they
are answered where they arrive (``Split.local``). The merge part's columns are renamed and cast to
what the query gives on one node (``Split.merge_sql(names, types)``, names and types taken from the
query run over empty views), so a cluster answer has the single node's column names and types.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb
import sqlglot
from sqlglot import exp

from ingest.buffer import MINUTE_ROLLUP_SCHEMA
from query.errors import SqlNotSplittable
from query.sqlcheck import check_sql
from storage.rollup import PRODUCER_ROLLUP_SCHEMA
from storage.schema import STORED_SCHEMA

__all__ = ["PARTIALS", "VIEW_COLUMNS", "Split", "split_sql"]

PARTIALS = "partials"
VIEW_COLUMNS: dict[str, tuple[str, ...]] = {
    "events": tuple(STORED_SCHEMA.names),
    "rollup_minute": tuple(MINUTE_ROLLUP_SCHEMA.names),
    "rollup_producer_hour": tuple(PRODUCER_ROLLUP_SCHEMA.names),
}
# Columns whose values never appear on two nodes of one read: each shard is read on exactly one
# node and a producer lives in exactly one shard.
_DISJOINT = {"producer_id", "shard"}
_DIALECT = "duckdb"
_HINT = ' — send "scope": "node" to run it on the receiving node\'s data alone'


def _refuse(why: str) -> SqlNotSplittable:
    return SqlNotSplittable(f"cluster-wide SQL cannot split this query: {why}{_HINT}")


@functools.cache
def _aggregate_names() -> frozenset[str]:
    """DuckDB's aggregate function names (its catalog, read once): an unknown-to-sqlglot call of
    one of them is an aggregate we cannot merge."""
    con = duckdb.connect(config={"autoload_known_extensions": False, "autoinstall_known_extensions": False})
    try:
        rows = con.sql(
            "SELECT DISTINCT lower(function_name) FROM duckdb_functions() WHERE function_type = 'aggregate'"
        ).fetchall()
    finally:
        con.close()
    return frozenset(r[0] for r in rows)


@dataclass(frozen=True)
class Split:
    """The two parts of a query. ``local``: answer ``sql`` where it arrives, no split."""

    sql: str
    local: bool = False
    node_sql: str = ""
    _merge_cols: tuple[exp.Expr, ...] = field(default=(), repr=False)
    _merge_tail: str = field(default="", repr=False)  # FROM partials … GROUP BY … LIMIT
    _distinct: bool = field(default=False, repr=False)

    def merge_sql(self, names: Sequence[str], types: Sequence[str]) -> str:
        """The merge part over ``partials``: its columns named ``names`` and cast to ``types``
        (the query's own names and DuckDB types on one node)."""
        if len(names) != len(self._merge_cols) or len(types) != len(names):
            raise SqlNotSplittable(f"the query has {len(names)} columns; its split has {len(self._merge_cols)}")
        cols = []
        for col, name, typ in zip(self._merge_cols, names, types, strict=True):
            e = col.sql(dialect=_DIALECT)
            if typ.upper() != "NULL":
                e = f"CAST({e} AS {typ})"
            cols.append(f"{e} AS {exp.to_identifier(name, quoted=True).sql(dialect=_DIALECT)}")
        head = "SELECT DISTINCT " if self._distinct else "SELECT "
        return head + ", ".join(cols) + " " + self._merge_tail


def _parse(sql: str) -> exp.Expr:
    trees = [t for t in sqlglot.parse(sql, dialect=_DIALECT) if t is not None and not isinstance(t, exp.Semicolon)]
    return trees[0]


def _reads_views(tree: exp.Expr) -> bool:
    ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    return any(
        isinstance(t.this, exp.Identifier) and t.name.lower() in VIEW_COLUMNS and t.name.lower() not in ctes
        for t in tree.find_all(exp.Table)
    )


def _int_literal(node: exp.Expr | None, what: str) -> int | None:
    if node is None:
        return None
    value = node.args.get("expression") if isinstance(node, (exp.Limit, exp.Offset)) else node
    if isinstance(value, exp.Literal) and value.is_int and int(value.this) >= 0:
        return int(value.this)
    raise _refuse(f"{what} must be a non-negative integer literal")


def _key(node: exp.Expr) -> str:
    return node.sql(dialect=_DIALECT).lower()


def split_sql(sql: str, row_cap: int | None = None) -> Split:
    """Split ``sql`` (checked by ``check_sql`` first) for a scatter-gather over disjoint shard
    sets. ``row_cap`` (rows the answer will keep) bounds what each node sends when the query has
    no aggregate. Raises ``SqlNotSplittable`` (why, and the ``scope=node`` hint), ``SqlNotAllowed``
    or ``InvalidQuery``."""
    check_sql(sql)
    head = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
    if head in ("EXPLAIN", "DESCRIBE", "DESC", "SHOW"):
        return Split(sql, local=True)  # plans and schemas are the same on every node
    tree = _parse(sql)
    if not _reads_views(tree):
        return Split(sql, local=True)
    if isinstance(tree, exp.Summarize):
        raise _refuse("SUMMARIZE computes statistics that do not add up across nodes")
    if not isinstance(tree, exp.Select):
        raise _refuse(f"{tree.key.upper()} (set operations) over the views are not split")
    return _Splitter(tree, row_cap).split(sql)


class _Splitter:
    def __init__(self, tree: exp.Select, row_cap: int | None) -> None:
        self.tree = tree.copy()
        self.row_cap = row_cap
        self.aggs: dict[str, tuple[list[str], str]] = {}  # agg key -> (partial column names, merge sql)
        self.node_cols: list[str] = []  # per-node select items, rendered
        self.n = 0

    # -- checks ---------------------------------------------------------------------------------

    def _validate(self) -> str:
        t = self.tree
        if t.args.get("with_"):
            raise _refuse("WITH (common table expressions) over the views are not split")
        for key in ("joins", "laterals", "pivots", "qualify", "windows", "connect", "match", "sample", "kind"):
            if t.args.get(key):
                raise _refuse(f"{key.upper().rstrip('S')} is not split")
        if t.args.get("exclude") or t.args.get("operation_modifiers"):
            raise _refuse("these SELECT modifiers are not split")
        distinct = t.args.get("distinct")
        if distinct is not None and distinct.args.get("on"):
            raise _refuse("DISTINCT ON is not split")
        for node in t.walk():
            if node is not t and isinstance(node, (exp.Select, exp.Subquery, exp.SetOperation)):
                raise _refuse("subqueries over the views are not split")
            if isinstance(node, exp.Window):
                raise _refuse("window functions (OVER …) need all rows of a partition in one place")
            if isinstance(node, (exp.Cube, exp.Rollup, exp.GroupingSets)):
                raise _refuse("ROLLUP, CUBE and GROUPING SETS are not split")
            if isinstance(node, exp.Fetch):
                raise _refuse("FETCH is not split; use LIMIT")
        src = t.args.get("from_")
        table = src.this if src is not None else None
        if not isinstance(table, exp.Table) or not isinstance(table.this, exp.Identifier):
            raise _refuse("the query must read one view (events, rollup_minute or rollup_producer_hour)")
        if table.args.get("sample") or table.args.get("joins"):
            raise _refuse("TABLESAMPLE is not split")
        view = table.name.lower()
        if view not in VIEW_COLUMNS:
            raise _refuse(f"{table.name} is not a view")
        # One table: qualifiers (events.x, e.x) say nothing; dropping them makes equal
        # expressions compare equal.
        names = {view, table.alias_or_name.lower()}
        for col in t.find_all(exp.Column):
            if col.table and col.table.lower() in names:
                col.set("table", None)
        return view

    # -- aggregates -----------------------------------------------------------------------------

    def _is_agg(self, node: exp.Expr) -> bool:
        if isinstance(node, exp.Filter):
            return self._is_agg(node.this)
        if isinstance(node, exp.AggFunc):
            return True
        return isinstance(node, exp.Anonymous) and str(node.name).lower() in _aggregate_names()

    def _partial(self, node: exp.Expr) -> str:
        """The merge expression of aggregate ``node``; its partial columns join the node part."""
        k = _key(node)
        if k in self.aggs:
            return self.aggs[k][1]
        filt = ""
        agg = node
        if isinstance(node, exp.Filter):
            filt = " " + node.expression.sql(dialect=_DIALECT).replace("WHERE", "FILTER (WHERE", 1) + ")"
            agg = node.this
        for inner in agg.find_all(exp.AggFunc, exp.Anonymous):
            if inner is not agg and self._is_agg(inner):
                raise _refuse("nested aggregates are not split")

        def col(sql_expr: str) -> str:
            name = f"_a{self.n}"
            self.n += 1
            self.node_cols.append(f"{sql_expr}{filt} AS {name}")
            cols.append(name)
            return name

        cols: list[str] = []
        arg = agg.this
        arg_sql = arg.sql(dialect=_DIALECT) if isinstance(arg, exp.Expr) else ""
        if isinstance(agg, exp.Count):
            if isinstance(arg, exp.Distinct):
                targets = arg.expressions
                one = targets[0] if len(targets) == 1 else None
                if not isinstance(one, exp.Column) or one.name.lower() not in _DISJOINT:
                    raise _refuse(
                        "count(DISTINCT …) adds up across nodes only for producer_id and shard "
                        "(each lives on one node of a read)"
                    )
                merged = f"CAST(coalesce(sum({col(f'count({arg_sql})')}), 0) AS BIGINT)"
            else:
                merged = f"CAST(coalesce(sum({col(agg.sql(dialect=_DIALECT))}), 0) AS BIGINT)"
        elif isinstance(agg, (exp.Sum, exp.Min, exp.Max)) and not isinstance(arg, exp.Distinct):
            fn = {exp.Sum: "sum", exp.Min: "min", exp.Max: "max"}[type(agg)]
            merged = f"{fn}({col(f'{fn}({arg_sql})')})"
        elif isinstance(agg, exp.Avg) and not isinstance(arg, exp.Distinct):
            s, c = col(f"sum({arg_sql})"), col(f"count({arg_sql})")
            merged = f"(CAST(sum({s}) AS DOUBLE) / sum({c}))"
        else:
            name = str(agg.name) if isinstance(agg, exp.Anonymous) else agg.key
            raise _refuse(
                f"{name.lower()}() does not merge across nodes; count, sum, min, max, avg and "
                "count(DISTINCT producer_id) do"
            )
        self.aggs[k] = (cols, merged)
        return merged

    # -- the split ------------------------------------------------------------------------------

    def split(self, sql: str) -> Split:
        view = self._validate()
        t = self.tree
        view_cols = set(VIEW_COLUMNS[view])
        projections: list[exp.Expr] = []
        for p in t.expressions:
            if isinstance(p, exp.Star) or (isinstance(p, exp.Column) and isinstance(p.this, exp.Star)):
                if any(p.args.get(k) for k in ("except_", "replace", "rename", "except")):
                    raise _refuse("SELECT * with EXCLUDE / REPLACE is not split")
                projections.extend(exp.column(c) for c in VIEW_COLUMNS[view])
            elif isinstance(p, exp.Columns) if hasattr(exp, "Columns") else False:
                raise _refuse("COLUMNS(…) is not split")
            else:
                projections.append(p)
        plain = [p.unalias() if isinstance(p, exp.Alias) else p for p in projections]
        aliases = {p.alias.lower(): i for i, p in enumerate(projections) if isinstance(p, exp.Alias)}

        def resolve(node: exp.Expr) -> exp.Expr:
            """Select-list aliases used in GROUP BY / HAVING / ORDER BY, as their expressions."""

            def sub(n: exp.Expr) -> exp.Expr:
                if isinstance(n, exp.Column) and not n.table and n.name.lower() not in view_cols:
                    i = aliases.get(n.name.lower())
                    if i is not None:
                        return plain[i].copy()
                return n

            return node.copy().transform(sub)

        group = t.args.get("group")
        keys: list[exp.Expr] = []
        if group is not None:
            if group.args.get("all"):
                keys = [p for p in plain if not any(self._is_agg(n) for n in p.walk())]
            for g in group.expressions:
                if isinstance(g, exp.Literal) and g.is_int:
                    i = int(g.this) - 1
                    if not 0 <= i < len(plain):
                        raise _refuse(f"GROUP BY {g.this} names no column")
                    keys.append(plain[i])
                else:
                    keys.append(resolve(g))
        order = t.args.get("order")
        order_items = list(order.expressions) if order is not None else []
        having = t.args.get("having")
        has_agg = group is not None or any(
            self._is_agg(n)
            for part in [*plain, *(o.this for o in order_items), *([having.this] if having else [])]
            for n in part.walk()
        )
        limit = _int_literal(t.args.get("limit"), "LIMIT")
        offset = _int_literal(t.args.get("offset"), "OFFSET") or 0
        where = t.args.get("where")
        where_sql = f" {where.sql(dialect=_DIALECT)}" if where is not None else ""
        src_sql = t.args["from_"].this.sql(dialect=_DIALECT)
        distinct = t.args.get("distinct") is not None
        tail_limit = (f" LIMIT {limit}" if limit is not None else "") + (f" OFFSET {offset}" if offset else "")

        def ordinal(o: exp.Ordered) -> int | None:
            e = o.this
            if isinstance(e, exp.Literal) and e.is_int:
                i = int(e.this) - 1
                if not 0 <= i < len(plain):
                    raise _refuse(f"ORDER BY {e.this} names no column")
                return i
            if isinstance(e, exp.Column) and not e.table and e.name.lower() in aliases:
                return aliases[e.name.lower()]
            k = _key(e)
            return next((i for i, p in enumerate(plain) if _key(p) == k), None)

        def ordered(o: exp.Ordered, this: exp.Expr) -> str:
            c = o.copy()
            c.set("this", this)
            return c.sql(dialect=_DIALECT)

        if not has_agg:
            self.node_cols = [f"{p.sql(dialect=_DIALECT)} AS _c{i}" for i, p in enumerate(plain)]
            merge_cols: list[exp.Expr] = [exp.column(f"_c{i}") for i in range(len(plain))]
            merge_order, node_order = [], []
            for o in order_items:
                at = ordinal(o)
                if at is not None:
                    merge_order.append(ordered(o, exp.Literal.number(at + 1)))
                    node_order.append(ordered(o, plain[at].copy()))
                    continue
                if distinct:
                    raise _refuse("with SELECT DISTINCT, ORDER BY must name selected columns")
                h = f"_o{len(merge_order)}"
                self.node_cols.append(f"{resolve(o.this).sql(dialect=_DIALECT)} AS {h}")
                merge_order.append(ordered(o, exp.column(h)))
                node_order.append(ordered(o, resolve(o.this)))
            # Each of the first rows of the whole is among the first rows of the node holding it.
            wanted = [n for n in (limit, None if self.row_cap is None else self.row_cap + 1) if n is not None]
            node_limit = f" LIMIT {min(wanted) + offset}" if wanted else ""
            node_sql = (
                f"SELECT {'DISTINCT ' if distinct else ''}{', '.join(self.node_cols)} FROM {src_sql}{where_sql}"
                + (f" ORDER BY {', '.join(node_order)}" if node_order and node_limit else "")
                + node_limit
            )
            tail = f"FROM {PARTIALS}" + (f" ORDER BY {', '.join(merge_order)}" if merge_order else "") + tail_limit
            return Split(sql, node_sql=node_sql, _merge_cols=tuple(merge_cols), _merge_tail=tail, _distinct=distinct)

        key_names: dict[str, str] = {}
        for k in keys:
            if any(self._is_agg(n) for n in k.walk()):
                raise _refuse("aggregates in GROUP BY are not allowed")
            if _key(k) not in key_names:
                key_names[_key(k)] = f"_g{len(key_names)}"
                self.node_cols.append(f"{k.sql(dialect=_DIALECT)} AS {key_names[_key(k)]}")
        group_sql = ", ".join(k.sql(dialect=_DIALECT) for k in keys)

        def merged(node: exp.Expr, what: str) -> exp.Expr:
            def sub(n: exp.Expr) -> exp.Expr:
                if self._is_agg(n):
                    return sqlglot.parse_one(self._partial(n), dialect=_DIALECT)
                name = key_names.get(_key(n))
                return exp.column(name) if name is not None else n

            out = node.copy().transform(sub)
            for c in out.find_all(exp.Column):
                if not (c.name.startswith("_a") or c.name.startswith("_g")) or c.table:
                    raise _refuse(f"{what} uses {c.sql(dialect=_DIALECT)}, which is neither grouped nor aggregated")
            return out

        merge_cols = [merged(p, "a selected column") for p in plain]
        merge_order = []
        for o in order_items:
            at = ordinal(o)
            if at is not None:
                merge_order.append(ordered(o, exp.Literal.number(at + 1)))
            else:
                merge_order.append(ordered(o, merged(resolve(o.this), "ORDER BY")))
        having_sql = f" HAVING {merged(resolve(having.this), 'HAVING').sql(dialect=_DIALECT)}" if having else ""
        if not self.node_cols:  # e.g. SELECT 1 FROM events GROUP BY ALL: one group per non-empty node
            self.node_cols.append("count(*) AS _a_rows")
        node_sql = f"SELECT {', '.join(self.node_cols)} FROM {src_sql}{where_sql}" + (
            f" GROUP BY {group_sql}" if keys else ""
        )
        merge_group = ", ".join(key_names.values())
        tail = (
            f"FROM {PARTIALS}"
            + (f" GROUP BY {merge_group}" if key_names else "")
            + having_sql
            + (f" ORDER BY {', '.join(merge_order)}" if merge_order else "")
            + tail_limit
        )
        return Split(sql, node_sql=node_sql, _merge_cols=tuple(merge_cols), _merge_tail=tail, _distinct=distinct)
