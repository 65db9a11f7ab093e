"""The SQL console in headless Chromium against a real node: run, URL, chart, cancel, export."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from playwright.sync_api import Page

from tests.browser.seed import CATEGORIES, PRODUCERS, Seeded

pytestmark = pytest.mark.browser

# Counting a trillion pairs keeps DuckDB busy far longer than any test runs, until cancelled.
LONG_QUERY = "SELECT count(*) AS pairs FROM range(1000000) a, range(1000000) b WHERE a.range + b.range > 7"


def status(page: Page) -> dict[str, str]:
    state: dict[str, str] = page.eval_on_selector("#status", "el => ({...el.dataset, text: el.textContent})")
    return state


def start_query(page: Page, sql: str, *, typed: bool = False) -> str:
    """Replaces the editor's text with `sql` and presses Ctrl+Enter; returns the previous query id."""
    before = status(page).get("queryId", "")
    page.locator("#editor .cm-content").click()
    page.keyboard.press("Control+a")
    if typed:
        page.keyboard.type(sql)
    else:
        page.keyboard.insert_text(sql)
    page.keyboard.press("Control+Enter")
    return before


def wait_settled(page: Page, previous_id: str) -> dict[str, str]:
    """Waits until a query newer than `previous_id` has finished one way or another."""
    page.wait_for_function(
        "prev => { const s = document.querySelector('#status').dataset;"
        " return s.queryId && s.queryId !== prev && s.state !== 'running'; }",
        arg=previous_id,
    )
    return status(page)


def run(page: Page, sql: str, **kwargs: Any) -> dict[str, str]:
    state = wait_settled(page, start_query(page, sql, **kwargs))
    assert state["state"] == "done", state
    return state


def open_console(page: Page, query: str = "") -> None:
    page.goto("/" + query)
    page.wait_for_selector("#schema details")  # the schema came back: the page is wired up


def series_pixels(page: Page) -> int:
    """Pixels of the first series colour on the chart's canvases: > 0 means data was drawn."""
    hits: int = page.evaluate(
        """() => {
          const probe = document.createElement('div');
          probe.style.color = getComputedStyle(document.documentElement).getPropertyValue('--series-0');
          document.body.append(probe);
          const [r, g, b] = getComputedStyle(probe).color.match(/\\d+/g).map(Number);
          probe.remove();
          let hits = 0;
          for (const canvas of document.querySelectorAll('#chart canvas')) {
            if (!canvas.width || !canvas.height) continue;
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            for (let i = 0; i < data.length; i += 4) {
              if (data[i + 3] > 0 && Math.abs(data[i] - r) < 24 && Math.abs(data[i + 1] - g) < 24
                  && Math.abs(data[i + 2] - b) < 24) hits += 1;
            }
          }
          return hits;
        }"""
    )
    return hits


def test_typed_query_runs_with_ctrl_enter_and_rows_appear(page: Page, seeded: Seeded) -> None:
    open_console(page)
    sql = "SELECT category, count(*) AS n, NULL AS nothing FROM events GROUP BY category ORDER BY category"
    state = run(page, sql, typed=True)

    assert state["rows"] == str(len(CATEGORIES))
    rows = page.locator("#results table tbody tr")
    assert rows.count() == len(CATEGORIES)
    shown = {rows.nth(i).locator("td").nth(1).inner_text(): rows.nth(i).locator("td").nth(2) for i in range(3)}
    assert {name: int(cell.inner_text()) for name, cell in shown.items()} == {c: seeded.count(c) for c in CATEGORIES}
    # Numbers are right-aligned, NULL is drawn apart from text, headers carry the column types.
    assert "num" in (shown["alpha"].get_attribute("class") or "")
    null_cell = rows.first.locator("td").nth(3)
    assert null_cell.inner_text() == "NULL" and "null" in (null_cell.get_attribute("class") or "")
    assert "BIGINT" in page.locator("#results thead th").nth(2).inner_text()
    assert int(state["ms"]) >= 0 and state["state"] == "done"


def test_url_holds_the_query_reload_reruns_it_and_back_restores(page: Page, seeded: Seeded) -> None:
    open_console(page)
    first = "SELECT producer_id FROM events GROUP BY producer_id ORDER BY producer_id"
    second = "SELECT DISTINCT category FROM events WHERE category = 'beta'"
    run(page, first)
    assert re.search(r"[?&]sql=", page.url)
    assert page.evaluate("new URLSearchParams(location.search).get('sql')") == first

    page.reload()
    page.wait_for_function("document.querySelector('#status').dataset.state === 'done'")
    assert status(page)["rows"] == str(PRODUCERS)
    assert page.locator("#editor .cm-content").inner_text() == first

    run(page, second)
    assert status(page)["rows"] == "1"
    previous = status(page)["queryId"]
    page.go_back()
    assert wait_settled(page, previous)["rows"] == str(PRODUCERS)
    assert page.evaluate("new URLSearchParams(location.search).get('sql')") == first


def test_chart_draws_lines_for_a_time_column_and_bars_for_labels(page: Page, seeded: Seeded, artifacts: Path) -> None:
    open_console(page)
    run(
        page,
        "SELECT timestamp - timestamp % 60000000000 AS minute, count(*) AS events, sum(value) AS total\n"
        "FROM events WHERE category IN ('alpha', 'beta', 'gamma') GROUP BY ALL ORDER BY minute",
    )
    assert page.locator("#chart").is_visible()
    assert page.locator("#chart canvas").count() >= 1
    assert series_pixels(page) > 50
    page.screenshot(path=str(artifacts / "console.png"))

    run(page, "SELECT producer_id, count(*) AS n FROM events GROUP BY ALL ORDER BY n DESC LIMIT 10")
    assert page.locator("#chart canvas.bar-chart").count() == 1
    assert series_pixels(page) > 50

    run(page, "SELECT 'no numbers here' AS s")
    assert not page.locator("#chart").is_visible()


def test_cancel_stops_a_long_query_on_the_server(page: Page, seeded: Seeded) -> None:
    open_console(page)
    previous = start_query(page, LONG_QUERY)
    page.wait_for_function(
        "prev => { const s = document.querySelector('#status').dataset;"
        " return s.state === 'running' && s.queryId !== prev; }",
        arg=previous,
    )
    query_id = status(page)["queryId"]
    page.locator("#cancel").click()

    state = wait_settled(page, previous)
    assert state["state"] == "cancelled", state
    assert "ancel" in state["text"]
    assert page.locator("#cancel").is_disabled()
    # The server confirmed it interrupted the query, and no longer runs it.
    page.wait_for_function("document.querySelector('#status').dataset.serverCancelled === 'true'")
    deadline = time.monotonic() + 30
    while httpx.post(f"{seeded.url}/v1/sql/cancel", json={"query_id": query_id}).json()["cancelled"]:
        assert time.monotonic() < deadline, "the query is still running on the server"
        time.sleep(0.1)
    # And the console takes the next query at once.
    assert run(page, "SELECT 42 AS answer")["rows"] == "1"


def test_export_downloads_the_whole_result_as_parquet_and_csv(page: Page, seeded: Seeded) -> None:
    open_console(page)
    sql = "SELECT * FROM events WHERE category IN ('alpha', 'beta', 'gamma') ORDER BY timestamp, producer_id"
    run(page, sql)
    # More rows than the table draws: the export must re-run the query, not scrape the screen.
    assert page.locator("#results table tbody tr").count() < len(seeded.events)

    with page.expect_download() as download:
        page.locator("#export-parquet").click()
    assert re.fullmatch(r"tributary-[0-9TZ]+\.parquet", download.value.suggested_filename)
    table = pq.read_table(download.value.path())
    assert table.num_rows == len(seeded.events)
    assert {"timestamp", "category", "value", "producer_id"} <= set(table.column_names)
    assert table.column("timestamp").to_pylist() == sorted(e.timestamp for e in seeded.events)
    assert sum(table.column("value").to_pylist()) == sum(e.value for e in seeded.events)

    with page.expect_download() as download:
        page.locator("#export-csv").click()
    assert download.value.suggested_filename.endswith(".csv")
    lines = Path(download.value.path()).read_text().strip().splitlines()
    assert len(lines) == len(seeded.events) + 1 and "producer_id" in lines[0]


def test_schema_click_inserts_and_history_restores(page: Page, seeded: Seeded) -> None:
    open_console(page)
    tables = {t.get_attribute("data-table") for t in page.locator("#schema details").all()}
    assert {"events", "rollup_minute", "rollup_producer_hour"} <= tables

    page.locator("#editor .cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text("SELECT  FROM events")
    for _ in range(len(" FROM events")):
        page.keyboard.press("ArrowLeft")
    page.locator("#schema details[data-table=events] .columns button", has_text="producer_id").click()
    assert page.locator("#editor .cm-content").inner_text() == "SELECT producer_id FROM events"

    run(page, "SELECT 1 AS one")
    run(page, "SELECT 2 AS two")
    entries = page.locator("#history li button")
    assert entries.count() == 2 and "SELECT 2" in entries.first.inner_text()
    entries.nth(1).click()
    assert page.locator("#editor .cm-content").inner_text() == "SELECT 1 AS one"


def test_core_query_links_answer_from_the_api(page: Page, seeded: Seeded) -> None:
    open_console(page)
    page.locator("#core-category").fill("beta")
    page.locator("#core-form select[name=start]").select_option("now-24h")
    page.locator("[data-testid=core-count]").click()
    answer = page.locator("[data-testid=api-answer]")
    answer.wait_for()
    assert answer.locator(".big-number .value").inner_text() == str(seeded.count("beta"))
    assert "/v1/count?category=beta" in answer.locator(".api-url a").inner_text()

    page.locator("[data-testid=core-topk]").click()
    page.wait_for_function("document.querySelector('[data-testid=api-answer] .api-url').textContent.includes('topk')")
    assert page.locator("#chart canvas.bar-chart").count() == 1
