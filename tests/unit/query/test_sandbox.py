"""The SQL sandbox under attack (issue 6) and answering right (issue 5).

Every escape attempt is its own case and must end in ``SqlNotAllowed`` or ``InvalidQuery`` —
never a result, never another exception, never a file written. The DuckDB layer is also attacked
alone, with the statement check bypassed, since each layer must hold on its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import query.sandbox as sandbox_module
from query.errors import InvalidQuery, QueryCancelled, QueryError, QueryTimeout, SqlNotAllowed
from query.sandbox import (
    Sandbox,
    SandboxConfig,
    open_connection,
    parse_statement,
    register_parquet,
)
from storage.schema import MINUTE_NS, STORED_SCHEMA

T0 = 1_700_000_000_000_000_000


def _rows(n: int, start: int, batch_id: int) -> pa.Table:
    return pa.table(
        {
            "timestamp": [T0 + (start + i) * 7_000_000_000 for i in range(n)],
            "category": [("clicks", "views", "errors")[i % 3] for i in range(n)],
            "value": [(i * 37) % 101 - 50 for i in range(n)],
            "producer_id": [f"p{i % 17}" for i in range(n)],
            "shard": [i % 8 for i in range(n)],
            "batch_id": [batch_id] * n,
        },
        schema=STORED_SCHEMA,
    )


class Node:
    """A data dir with two Parquet parts and a live buffer, and the views over them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.parts = [_rows(300, 0, 1), _rows(200, 300, 2)]
        self.buffer = _rows(50, 500, 3)
        self.files = []
        for i, part in enumerate(self.parts):
            d = root / "partitions" / f"hour=2023-11-14T2{i}"
            d.mkdir(parents=True)
            path = d / f"events-{i}.parquet"
            pq.write_table(part, path)
            self.files.append(str(path))
        (root / "manifest").write_text("secret manifest\n")

    def all_rows(self) -> pa.Table:
        return pa.concat_tables([*self.parts, self.buffer])

    def views(self, con: duckdb.DuckDBPyConnection) -> None:
        register_parquet(con, "events_parts", self.files, STORED_SCHEMA)
        con.register("events_buffer", self.buffer)
        con.execute("CREATE VIEW events AS SELECT * FROM events_parts UNION ALL BY NAME SELECT * FROM events_buffer")
        con.execute(
            f"CREATE VIEW rollup_minute AS SELECT category, shard, timestamp // {MINUTE_NS} * {MINUTE_NS} AS minute, "
            "count(*) AS count, sum(value) AS sum FROM events GROUP BY ALL"
        )
        con.execute(
            "CREATE VIEW rollup_producer_hour AS SELECT category, shard, timestamp // 3600000000000 * 3600000000000 "
            "AS hour, producer_id, count(*) AS count, sum(value) AS sum FROM events GROUP BY ALL"
        )


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path / "data")


@pytest.fixture
def sandbox() -> Sandbox:
    return Sandbox(SandboxConfig(timeout_s=30.0))


def _files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*")}


# -- escape attempts ---------------------------------------------------------------------------

# {part} is one of the node's own Parquet files, {data} the data dir, {out} a path that must stay absent.
ESCAPES = {
    "read_csv": "SELECT * FROM read_csv('/etc/passwd')",
    "read_csv_auto": "SELECT * FROM read_csv_auto('/etc/passwd')",
    "read_csv_mixed_case": "SeLeCt * FrOm ReAd_CsV('/etc/passwd')",
    "read_csv_quoted_name": "SELECT * FROM \"read_csv\"('/etc/passwd')",
    "read_parquet": "SELECT * FROM read_parquet('/etc/passwd')",
    "read_parquet_own_part": "SELECT * FROM read_parquet('{part}')",
    "parquet_scan": "SELECT * FROM parquet_scan('{part}')",
    "parquet_metadata": "SELECT * FROM parquet_metadata('{part}')",
    "read_json": "SELECT * FROM read_json('/etc/passwd')",
    "read_text": "SELECT * FROM read_text('/etc/passwd')",
    "read_text_manifest": "SELECT * FROM read_text('{data}/manifest')",
    "read_blob": "SELECT * FROM read_blob('/etc/passwd')",
    "glob_root": "SELECT * FROM glob('/*')",
    "glob_data": "SELECT * FROM glob('{data}/**')",
    "sniff_csv": "SELECT * FROM sniff_csv('/etc/passwd')",
    "replacement_scan_path": "SELECT * FROM '{part}'",
    "replacement_scan_relative": "SELECT * FROM 'file.parquet'",
    "replacement_scan_quoted_ident": 'SELECT * FROM "/etc/passwd"',
    "cte_shadows_view_with_file": "WITH events AS (SELECT * FROM read_parquet('/etc/passwd')) SELECT * FROM events",
    "union_with_file": "SELECT category FROM events UNION ALL SELECT * FROM read_csv('/etc/passwd')",
    "subquery_file": "SELECT * FROM (SELECT * FROM read_text('/etc/passwd')) t",
    "join_file": "SELECT * FROM events e JOIN read_csv('/etc/passwd') p ON true",
    "comma_join_file": "SELECT * FROM events, read_text('/etc/passwd')",
    "in_subquery_file": "SELECT * FROM events WHERE category IN (SELECT content FROM read_text('/etc/passwd'))",
    "dynamic_sql_query": "SELECT * FROM query('SELECT * FROM read_csv(''/etc/passwd'')')",
    "dynamic_sql_query_table": "SELECT * FROM query_table('events')",
    "serialized_sql": "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT 1'))",
    "copy_to": "COPY events TO '{out}'",
    "copy_query_to": "COPY (SELECT 1) TO '{out}' (FORMAT csv)",
    "copy_over_own_part": "COPY (SELECT 1 AS x) TO '{part}' (FORMAT parquet, USE_TMP_FILE false)",
    "copy_from": "COPY events FROM '/etc/passwd'",
    "export_database": "EXPORT DATABASE '{out}'",
    "import_database": "IMPORT DATABASE '/etc'",
    "attach": "ATTACH '{out}' AS x",
    "attach_memory": "ATTACH ':memory:' AS x",
    "detach": "DETACH memory",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "set": "SET memory_limit = '10GB'",
    "set_external_access": "SET enable_external_access = true",
    "set_variable": "SET VARIABLE x = 1",
    "reset": "RESET memory_limit",
    "pragma_set": "PRAGMA memory_limit = '10GB'",
    "pragma_info": "PRAGMA database_list",
    "create_table": "CREATE TABLE t AS SELECT 1",
    "create_view": "CREATE VIEW v AS SELECT * FROM read_csv('/etc/passwd')",
    "create_macro": "CREATE MACRO m(x) AS x",
    "create_secret": "CREATE SECRET (TYPE s3, KEY_ID 'k', SECRET 's')",
    "insert": "INSERT INTO events VALUES (1, 'c', 1, 'p', 0, 0)",
    "update": "UPDATE events SET value = 0",
    "delete": "DELETE FROM events",
    "drop_view": "DROP VIEW events",
    "truncate": "TRUNCATE events",
    "alter": "ALTER VIEW events RENAME TO e",
    "select_into": "SELECT 1 INTO t",
    "cte_with_delete": "WITH t AS (DELETE FROM events RETURNING *) SELECT * FROM t",
    "getenv": "SELECT getenv('HOME')",
    "current_setting": "SELECT current_setting('allowed_directories')",
    "duckdb_settings": "SELECT * FROM duckdb_settings()",
    "duckdb_settings_system": "SELECT * FROM system.main.duckdb_settings()",
    "duckdb_extensions": "SELECT * FROM duckdb_extensions()",
    "duckdb_secrets": "SELECT * FROM duckdb_secrets()",
    "pg_settings": "SELECT * FROM pg_catalog.pg_settings",
    "information_schema": "SELECT * FROM information_schema.tables",
    "sqlite_master": "SELECT * FROM sqlite_master",
    "enable_profiling": "SELECT * FROM enable_profiling()",
    "write_log": "SELECT write_log('x')",
    "two_statements": "SELECT 1; SELECT 2",
    "second_statement_drop": "SELECT 1; DROP VIEW events",
    "comment_smuggled_line": "SELECT 1; -- just a comment\n DROP VIEW events",
    "comment_smuggled_block": "SELECT 1 /* harmless */; DROP VIEW events",
    "comment_smuggled_block_after": "SELECT 1; /* ; */ COPY events TO '{out}'",
    "explain_copy": "EXPLAIN COPY events TO '{out}'",
    "explain_analyze_create": "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
    "describe_file": "DESCRIBE SELECT * FROM read_csv('/etc/passwd')",
    "summarize_file": "SUMMARIZE SELECT * FROM read_csv('/etc/passwd')",
    "call": "CALL pragma_version()",
    "checkpoint": "CHECKPOINT",
    "force_checkpoint": "FORCE CHECKPOINT",
    "vacuum": "VACUUM",
    "begin": "BEGIN TRANSACTION",
    "use": "USE system",
    "prepare": "PREPARE p AS SELECT 1",
    "show": "SHOW TABLES",
    "pivot_multi_statement": "PIVOT events ON category USING sum(value)",
    "memory_repeat": "SELECT length(repeat('x', 3000000000))",
    "memory_range_list": "SELECT len(range(200000000))",
    "memory_lpad": "SELECT length(lpad('x', 1500000000, 'y'))",
    "memory_list_resize": "SELECT len(list_resize([1], 200000000))",
    "memory_printf": "SELECT length(printf('%1500000000d', 1))",
    "memory_replace": "SELECT length(replace(s, 'x', s)) FROM (SELECT string_agg('x', '') AS s FROM range(40000))",
    "memory_unnest_range": "SELECT count(*) FROM (SELECT unnest(range(200000000)))",
    "parse_error": "SELECT * FROM",
    "unterminated_string": "SELECT 'abc",
    "not_sql": "rm -rf /",
    "empty": "  ;  -- nothing\n",
}


@pytest.mark.parametrize("sql", ESCAPES.values(), ids=ESCAPES.keys())
def test_escape_attempt_is_refused(sql: str, node: Node, sandbox: Sandbox, tmp_path: Path) -> None:
    out = tmp_path / "out" / "x"
    sql = sql.format(part=node.files[0], data=node.root, out=out)
    before = _files_under(tmp_path)
    part_bytes = Path(node.files[0]).read_bytes()
    with pytest.raises((SqlNotAllowed, InvalidQuery)) as err:
        sandbox.run(sql, node.views)
    assert err.value.detail
    assert _files_under(tmp_path) == before
    assert Path(node.files[0]).read_bytes() == part_bytes
    assert sandbox.running() == []


# -- the DuckDB layer alone (check_sql bypassed) -------------------------------------------------

LAYER2_FILE_AND_SETTING_ATTACKS = {
    "read_csv": "SELECT * FROM read_csv('/etc/passwd')",
    "read_text": "SELECT * FROM read_text('/etc/passwd')",
    "read_blob_own_manifest": "SELECT * FROM read_blob('{data}/manifest')",
    "read_parquet_own_part": "SELECT * FROM read_parquet('{part}')",
    "replacement_scan_own_part": "SELECT * FROM '{part}'",
    "glob": "SELECT * FROM glob('/*')",
    "copy_to": "COPY (SELECT 1) TO '{out}'",
    "copy_over_own_part": "COPY (SELECT 1 AS x) TO '{part}' (FORMAT parquet, USE_TMP_FILE false)",
    "export_database": "EXPORT DATABASE '{out}'",
    "attach_file": "ATTACH '{out}' AS x",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "set_memory_limit": "SET memory_limit = '10GB'",
    "set_external_access": "SET enable_external_access = true",
    "set_allowed_directories": "SET allowed_directories = ['/']",
    "reset": "RESET memory_limit",
    "pragma": "PRAGMA memory_limit = '10GB'",
    "enable_profiling": "SELECT * FROM enable_profiling()",
    "python_variable": "SELECT * FROM secret_table_in_caller",
    "copy_to_memory_name_in_cwd": "COPY (SELECT 1 AS x) TO ':memory:' (FORMAT csv)",
    "copy_to_memory_wal_in_cwd": "COPY (SELECT 1 AS x) TO ':memory:.wal' (FORMAT csv, USE_TMP_FILE false)",
    "copy_to_temp_dir_in_cwd": "COPY (SELECT 1 AS x) TO '.tmp/x.csv'",
}


@pytest.mark.parametrize("sql", LAYER2_FILE_AND_SETTING_ATTACKS.values(), ids=LAYER2_FILE_AND_SETTING_ATTACKS.keys())
def test_connection_alone_refuses_files_and_settings(
    sql: str, node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a write to a relative path would land here and be seen
    secret_table_in_caller = pa.table({"secret": ["s3cr3t"]})  # what a replacement scan would find
    assert secret_table_in_caller.num_rows == 1
    out = tmp_path / "out" / "x"
    sql = sql.format(part=node.files[0], data=node.root, out=out)
    before = _files_under(tmp_path)
    part_bytes = Path(node.files[0]).read_bytes()
    con = open_connection(SandboxConfig(memory_limit="256MB"))
    try:
        node.views(con)
        with pytest.raises(duckdb.Error):
            con.execute(sql).fetchall()
    finally:
        con.close()
    assert _files_under(tmp_path) == before
    assert Path(node.files[0]).read_bytes() == part_bytes


def test_connection_settings_are_locked_down() -> None:
    con = open_connection(SandboxConfig(memory_limit="256MB", threads=1))
    try:
        row = con.sql(
            "SELECT current_setting('enable_external_access'), current_setting('allowed_directories'), "
            "current_setting('allowed_paths'), current_setting('lock_configuration'), "
            "current_setting('autoload_known_extensions'), current_setting('temp_directory'), "
            "current_setting('python_enable_replacements'), current_setting('threads')"
        ).fetchall()
    finally:
        con.close()
    assert row == [(False, [], [], True, False, "", False, 1)]


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE t AS SELECT 1",
        "CREATE TEMP TABLE t AS SELECT 1",
        "INSERT INTO events_buffer SELECT * FROM events_buffer",
        "DROP VIEW events",
        "COPY (SELECT 1) TO 'x.csv'",
        "SET threads = 1",
        "ATTACH ':memory:' AS m",
        "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
        "SELECT 1; CREATE TABLE t AS SELECT 1",
        "CHECKPOINT",
    ],
)
def test_duckdb_parser_refuses_writes_without_check_sql(sql: str, node: Node) -> None:
    con = open_connection(SandboxConfig())
    try:
        node.views(con)
        with pytest.raises(SqlNotAllowed):
            parse_statement(con, sql)
        assert con.sql("SELECT count(*) FROM duckdb_tables()").fetchall() == [(0,)]
    finally:
        con.close()


@pytest.mark.parametrize(
    ("sql", "error"),
    [
        ("CREATE TABLE t AS SELECT 1", SqlNotAllowed),
        ("INSERT INTO events_buffer SELECT * FROM events_buffer", SqlNotAllowed),
        ("SELECT * FROM read_csv('/etc/passwd')", SqlNotAllowed),
        ("SELECT * FROM read_parquet('{part}')", SqlNotAllowed),
        ("SELECT * FROM glob('/*')", SqlNotAllowed),
        ("SET memory_limit = '10GB'", SqlNotAllowed),
        ("SELECT * FROM enable_profiling()", InvalidQuery),
    ],
)
def test_sandbox_holds_with_check_sql_bypassed(
    sql: str, error: type[QueryError], node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox_module, "check_sql", lambda sql, views: None)
    with pytest.raises(error):
        Sandbox().run(sql.format(part=node.files[0]), node.views)


# -- limits ---------------------------------------------------------------------------------------

BOMB = "SELECT count(*) FROM range(1000000) a, range(1000000) b"


def test_time_limit_interrupts_a_cartesian_bomb(node: Node) -> None:
    sandbox = Sandbox(SandboxConfig(timeout_s=0.5))
    with pytest.raises(QueryTimeout):
        sandbox.run(BOMB, node.views)
    assert sandbox.running() == []
    assert sandbox.run("SELECT count(*) AS n FROM events", node.views).table.to_pylist() == [{"n": 550}]


def test_time_limit_interrupts_a_bomb_over_the_parquet_views(node: Node) -> None:
    sandbox = Sandbox(SandboxConfig(timeout_s=0.5))
    with pytest.raises(QueryTimeout):
        sandbox.run("SELECT count(*) FROM events a, events b, events c, events d", node.views)


def _run_in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=target)
    t.start()
    return t, errors


def _wait_until(cond: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        time.sleep(0.01)


def test_cancel_from_another_thread(node: Node, sandbox: Sandbox) -> None:
    t, errors = _run_in_thread(lambda: sandbox.run(BOMB, node.views, query_id="bomb-1"))
    _wait_until(lambda: "bomb-1" in sandbox.running())
    assert sandbox.cancel("bomb-1") is True
    t.join(timeout=30)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], QueryCancelled)
    assert sandbox.cancel("bomb-1") is False
    assert sandbox.running() == []


def test_cancel_of_an_unknown_query_is_false(sandbox: Sandbox) -> None:
    assert sandbox.cancel("never-ran") is False


def test_a_running_query_id_cannot_be_reused(node: Node, sandbox: Sandbox) -> None:
    with sandbox.stream("SELECT * FROM events", node.views, query_id="q") as s:
        with pytest.raises(InvalidQuery, match="already running"):
            sandbox.run("SELECT 1", node.views, query_id="q")
        assert sum(b.num_rows for b in s) == 550
    assert sandbox.run("SELECT 1 AS x", node.views, query_id="q").query_id == "q"


def test_huge_result_is_capped_not_materialised(node: Node, sandbox: Sandbox) -> None:
    result = sandbox.run("SELECT * FROM range(10000000000) t(x)", node.views, max_rows=1000)
    assert result.table.num_rows == 1000
    assert result.truncated is True
    assert result.table.column("x").to_pylist() == list(range(1000))


@pytest.mark.parametrize(("rows", "truncated"), [(999, False), (1000, False), (1001, True)])
def test_truncated_flag_at_the_edge_of_the_cap(rows: int, truncated: bool, node: Node, sandbox: Sandbox) -> None:
    result = sandbox.run(f"SELECT * FROM range({rows})", node.views, max_rows=1000)
    assert result.table.num_rows == min(rows, 1000)
    assert result.truncated is truncated


def test_requested_max_rows_cannot_exceed_the_configured_cap(node: Node) -> None:
    sandbox = Sandbox(SandboxConfig(max_rows=50))
    result = sandbox.run("SELECT * FROM events", node.views, max_rows=10**9)
    assert (result.table.num_rows, result.truncated) == (50, True)


def test_byte_cap_truncates_a_wide_result(node: Node) -> None:
    sandbox = Sandbox(SandboxConfig(max_bytes=100_000))
    result = sandbox.run("SELECT x, md5(x::VARCHAR) AS h FROM range(1000000) t(x)", node.views)
    assert result.truncated is True
    assert 0 < result.table.num_rows < 1_000_000


def test_memory_limit_is_an_invalid_query_not_a_crash(node: Node) -> None:
    sandbox = Sandbox(SandboxConfig(memory_limit="64MB"))
    with pytest.raises(InvalidQuery, match="memory"):
        sandbox.run("SELECT count(DISTINCT x::VARCHAR) FROM range(50000000) t(x)", node.views)


def test_export_stream_is_capped_and_bounded(node: Node) -> None:
    sandbox = Sandbox(SandboxConfig(max_export_rows=300_000))
    with sandbox.stream("SELECT * FROM range(1000000) t(x)", node.views) as s:
        sizes = [b.num_rows for b in s]
    assert sum(sizes) == 300_000 and s.truncated and s.rows == 300_000
    assert max(sizes) <= 65_536
    assert sandbox.running() == []


def test_export_stream_time_limit_raises_while_iterating(node: Node) -> None:
    sandbox = Sandbox(SandboxConfig(export_timeout_s=0.5))
    with pytest.raises(QueryTimeout), sandbox.stream(f"SELECT 1 AS x UNION ALL ({BOMB})", node.views) as s:
        for _ in s:
            pass


# -- answering right ------------------------------------------------------------------------------


def test_views_over_parquet_and_buffer_return_every_row(node: Node, sandbox: Sandbox) -> None:
    result = sandbox.run(
        "SELECT category, count(*) AS n, sum(value) AS s FROM events GROUP BY category ORDER BY category", node.views
    )
    expected: dict[str, list[int]] = {}
    for r in node.all_rows().to_pylist():
        e = expected.setdefault(r["category"], [0, 0])
        e[0] += 1
        e[1] += r["value"]
    assert [(r["category"], r["n"], r["s"]) for r in result.table.to_pylist()] == [
        (c, n, s) for c, (n, s) in sorted(expected.items())
    ]
    assert result.column_types == ("VARCHAR", "BIGINT", "HUGEINT")
    assert result.truncated is False


def test_filtered_rows_match_the_oracle(node: Node, sandbox: Sandbox) -> None:
    lo, hi = T0 + 250 * 7_000_000_000, T0 + 520 * 7_000_000_000
    result = sandbox.run(
        f"SELECT * FROM events WHERE timestamp >= {lo} AND timestamp < {hi} AND producer_id = 'p3' ORDER BY timestamp",
        node.views,
    )
    expected = [r for r in node.all_rows().to_pylist() if lo <= r["timestamp"] < hi and r["producer_id"] == "p3"]
    assert result.table.to_pylist() == expected
    assert result.table.schema.names == STORED_SCHEMA.names


def test_empty_parquet_list_with_schema_is_an_empty_source(sandbox: Sandbox) -> None:
    def views(con: duckdb.DuckDBPyConnection) -> None:
        register_parquet(con, "events_parts", [], STORED_SCHEMA)
        con.execute("CREATE VIEW events AS SELECT * FROM events_parts")

    result = sandbox.run("SELECT count(*) AS n FROM events", views)
    assert result.table.to_pylist() == [{"n": 0}]


ALLOWED = [
    "SELECT category, count(*), sum(value), min(value), max(value), avg(value) FROM events GROUP BY ALL ORDER BY ALL",
    "FROM events SELECT category, count(DISTINCT producer_id) GROUP BY category",
    "SELECT * EXCLUDE (batch_id) FROM events LIMIT 3",
    "WITH c AS (SELECT category, count(*) AS n FROM events GROUP BY 1) SELECT * FROM c WHERE n > 1",
    "SELECT producer_id, count(*) AS n FROM events GROUP BY 1 ORDER BY n DESC, producer_id LIMIT 5",
    "SELECT * FROM events QUALIFY row_number() OVER (PARTITION BY category ORDER BY timestamp DESC) = 1",
    "SELECT minute, sum(count) FROM rollup_minute GROUP BY minute ORDER BY minute",
    "SELECT hour, producer_id, count FROM rollup_producer_hour ORDER BY count DESC LIMIT 3",
    "SELECT date_trunc('minute', make_timestamp(timestamp // 1000)) AS m, count(*) FROM events GROUP BY 1",
    "SELECT time_bucket(INTERVAL 5 MINUTE, to_timestamp(timestamp / 1e9)) AS b, sum(value) FROM events GROUP BY 1",
    "SELECT strftime(make_timestamp(timestamp // 1000), '%Y-%m-%d %H'), epoch_ns(now()) > 0 FROM events LIMIT 1",
    "SELECT approx_count_distinct(producer_id), quantile_cont(value, 0.5), median(value) FROM events",
    "SELECT arg_max(producer_id, value), string_agg(DISTINCT category, ',' ORDER BY category) FROM events",
    "SELECT list(value ORDER BY timestamp)[1:3], histogram(category) FROM events",
    "SELECT {'c': category, 'v': value} AS s, [value, value * 2] AS l FROM events LIMIT 2",
    "SELECT x, x * x FROM range(10) t(x) UNION ALL SELECT * FROM generate_series(1, 3) g(y), (SELECT 1)",
    "SELECT unnest([1, 2, 3]) AS x",
    "SELECT * FROM unnest([1, 2]) t(x)",
    "SELECT count(*) FILTER (WHERE value > 0), sum(value) FILTER (WHERE category = 'clicks') FROM events",
    "SELECT regexp_matches(producer_id, 'p1.*'), upper(category), length(producer_id), lower(category) FROM events",
    "SELECT hash(producer_id) % 8, md5(category), coalesce(NULL, 1), greatest(1, 2), abs(-3) FROM events LIMIT 1",
    "SELECT e.category, r.minute FROM events e JOIN rollup_minute r USING (category, shard) LIMIT 5",
    "SELECT * FROM events WHERE category IN (SELECT category FROM events WHERE value > 40) LIMIT 3",
    "SELECT list_transform([1, 2], lambda x: x + 1), list_filter([1, 2], lambda x: x > 1), [x FOR x IN [1]]",
    "SELECT sum(value) OVER (ORDER BY timestamp ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) FROM events LIMIT 3",
    "SELECT CAST(value AS DOUBLE) / 3, value::VARCHAR, try_cast('x' AS INTEGER) FROM events LIMIT 1",
    "VALUES (1, 'a'), (2, 'b')",
    "(SELECT 1 AS x)",
    "SELECT 1 AS x INTERSECT SELECT 1 EXCEPT SELECT 2",
    "SELECT * FROM main.events LIMIT 1",
    "SELECT * FROM memory.main.events LIMIT 1",
    "SELECT 1; -- a trailing comment is not a statement",
    "EXPLAIN SELECT * FROM events WHERE value > 3",
    "EXPLAIN ANALYZE SELECT count(*) FROM events",
    "DESCRIBE events",
    "DESCRIBE SELECT category FROM events",
    "SUMMARIZE events",
    "SELECT * FROM (PIVOT events ON category IN ('clicks', 'views') USING sum(value) GROUP BY shard)",
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_ordinary_analytics_are_allowed(sql: str, node: Node, sandbox: Sandbox) -> None:
    result = sandbox.run(sql, node.views)
    assert result.table.num_columns >= 1
    assert len(result.column_types) == result.table.num_columns


def test_parse_error_from_duckdb_is_invalid_query(node: Node, sandbox: Sandbox) -> None:
    with pytest.raises(InvalidQuery, match="nope"):
        sandbox.run("SELECT nope FROM events", node.views)
    with pytest.raises(InvalidQuery):
        sandbox.run("SELECT 1 / 'x'::INTEGER", node.views)
