"""The SQL endpoint under attack, through HTTP on a real node: each escape attempt is a 4xx
problem+json that leaks nothing, a runaway query is cut by the time limit, a huge result is
capped, and the node answers ``/health`` throughout."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.process import NodeProcess

pytestmark = pytest.mark.integration

MAX_ROWS = 100
MAX_EXPORT_ROWS = 5000
SECRET_FILE_MARK = "root:"  # the first line of /etc/passwd

ESCAPES = {
    "read_csv": "SELECT * FROM read_csv('/etc/passwd')",
    "read_csv_auto": "SELECT * FROM read_csv_auto('/etc/passwd')",
    "read_csv_list": "SELECT * FROM read_csv(['/etc/passwd'])",
    "read_parquet": "SELECT * FROM read_parquet('/etc/passwd')",
    "read_json": "SELECT * FROM read_json_auto('/etc/passwd')",
    "read_text": "SELECT * FROM read_text('/etc/passwd')",
    "read_blob": "SELECT * FROM read_blob('/etc/passwd')",
    "replacement_scan": "SELECT * FROM '/etc/passwd'",
    "sniff_csv": "SELECT * FROM sniff_csv('/etc/passwd')",
    "parquet_metadata": "SELECT * FROM parquet_metadata('/etc/passwd')",
    "glob": "SELECT * FROM glob('/*')",
    "own_data_dir": "SELECT * FROM read_text('manifest.json')",
    "copy_to": "COPY (SELECT 1) TO '/tmp/tributary-escape.csv'",
    "copy_events_to": "COPY events TO '/tmp/tributary-escape.parquet' (FORMAT parquet)",
    "export_database": "EXPORT DATABASE '/tmp/tributary-escape'",
    "attach": "ATTACH '/tmp/tributary-escape.db' AS x",
    "detach": "DETACH memory",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "set": "SET enable_external_access = true",
    "set_memory": "SET memory_limit = '100GB'",
    "reset": "RESET memory_limit",
    "pragma": "PRAGMA enable_profiling",
    "pragma_function": "SELECT * FROM pragma_database_list()",
    "create_table": "CREATE TABLE t AS SELECT 1 AS x",
    "create_macro": "CREATE MACRO m(x) AS x + 1",
    "create_secret": "CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
    "insert": "INSERT INTO events VALUES (1, 'c', 1, 'p', 0, 0)",
    "update": "UPDATE events SET value = 0",
    "delete": "DELETE FROM events",
    "drop": "DROP VIEW events",
    "getenv": "SELECT getenv('HOME')",
    "duckdb_settings": "SELECT name, value FROM duckdb_settings()",
    "current_setting": "SELECT current_setting('temp_directory')",
    "duckdb_extensions": "SELECT * FROM duckdb_extensions()",
    "query_function": "SELECT * FROM query('SELECT * FROM read_csv(''/etc/passwd'')')",
    "two_statements": "SELECT 1; SELECT 2",
    "comment_smuggled": "SELECT 1 /* harmless */; COPY (SELECT 1) TO '/tmp/tributary-escape.csv' -- ",
    "line_comment_smuggled": "SELECT 1 --\n; DROP VIEW events",
    "cte_read": "WITH x AS (SELECT * FROM read_csv('/etc/passwd')) SELECT * FROM x",
    "subquery_read": "SELECT (SELECT count(*) FROM read_text('/etc/passwd')) AS n",
    "explain_analyze_read": "EXPLAIN ANALYZE SELECT * FROM read_csv('/etc/passwd')",
    "describe_file": "DESCRIBE SELECT * FROM '/etc/passwd'",
    "mixed_case": "sElEcT * fRoM ReAd_CsV('/etc/passwd')",
    "checkpoint": "CHECKPOINT",
    "call": "CALL pragma_version()",
    "use": "USE system",
}


@pytest.fixture(scope="module")
def sql_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    data: Path = tmp_path_factory.mktemp("sqlhostile")
    args = [
        "--no-fsync", "--sql-timeout-s", "2", "--sql-max-rows", str(MAX_ROWS),
        "--sql-max-export-rows", str(MAX_EXPORT_ROWS),
    ]  # fmt: skip
    with NodeProcess(data, args=args, name="sqlhostile") as n:
        yield n


def _sql(node: NodeProcess, sql: str, fmt: str = "json", timeout: float = 60) -> httpx.Response:
    return httpx.post(node.url + "/v1/sql", json={"sql": sql, "format": fmt}, timeout=timeout)


def test_there_are_at_least_20_escape_attempts() -> None:
    assert len(ESCAPES) >= 20


@pytest.mark.parametrize("sql", ESCAPES.values(), ids=ESCAPES.keys())
def test_an_escape_attempt_is_a_4xx_problem_that_leaks_nothing(sql_node: NodeProcess, sql: str) -> None:
    r = _sql(sql_node, sql)
    assert 400 <= r.status_code < 500, f"{r.status_code}: {r.text[:500]}"
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == r.status_code and body["detail"]
    assert SECRET_FILE_MARK not in r.text
    assert str(sql_node.data_dir) not in r.text, "the answer names the node's data directory"
    assert not Path("/tmp/tributary-escape.csv").exists() and not Path("/tmp/tributary-escape.parquet").exists()
    assert httpx.get(sql_node.url + "/health", timeout=10).status_code == 200


def test_a_cartesian_bomb_is_cut_by_the_time_limit_and_the_node_stays_responsive(sql_node: NodeProcess) -> None:
    answers: list[httpx.Response] = []
    bomb = "SELECT count(*) FROM range(1000000) a, range(1000000) b"  # 10^12 pairs, streamed
    t = threading.Thread(target=lambda: answers.append(_sql(sql_node, bomb, timeout=120)))
    t.start()
    health = []
    with httpx.Client(base_url=sql_node.url, timeout=10) as http:
        while t.is_alive():
            health.append(http.get("/health").status_code)
            time.sleep(0.1)
    t.join()
    assert health and set(health) == {200}, "the node answered /health while the bomb ran"
    (r,) = answers
    assert r.status_code == 408, r.text[:300]
    assert r.json()["type"] == "/problems/query-timeout"
    assert _sql(sql_node, "SELECT 42 AS x").json()["rows"] == [[42]], "the next query runs"


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_a_huge_result_is_capped(sql_node: NodeProcess, fmt: str) -> None:
    r = _sql(sql_node, "SELECT range AS n, range * 2 AS m FROM range(100000000)", fmt=fmt)
    assert r.status_code == 200, r.text[:300]
    if fmt == "json":
        body = r.json()
        assert body["truncated"] is True and body["row_count"] == MAX_ROWS == len(body["rows"])
    else:
        assert len(r.text.splitlines()) == MAX_EXPORT_ROWS + 1  # header + capped rows
    assert httpx.get(sql_node.url + "/health", timeout=10).status_code == 200
