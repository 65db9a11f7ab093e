"""A node that checks tokens: the pages load, ask for a token once, and then work with it."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser

from tests.support.process import NodeFactory, node_factory  # noqa: F401 - the fixture

pytestmark = pytest.mark.browser

QUERY_TOKEN = "browser-test-query-token-0001"


def test_console_asks_for_a_token_and_sends_it(browser: Browser, node_factory: NodeFactory) -> None:  # noqa: F811
    node = node_factory("guarded", env={"TRIBUTARY_TOKENS": f"{QUERY_TOKEN} query"})
    context = browser.new_context(base_url=node.url)
    context.set_default_timeout(20_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto("/")
        dialog = page.locator("#token-dialog")
        dialog.wait_for()
        assert page.locator("#schema details").count() == 0  # refused until a token is given

        dialog.locator("input").fill(QUERY_TOKEN)
        dialog.locator("button[value=save]").click()
        page.wait_for_selector("#schema details[data-table=events]")
        assert not dialog.is_visible()
        assert page.locator("#token-button").is_visible()

        # The token is kept: the dashboard, opened next, asks nothing and shows the node.
        page.goto("/dashboard")
        page.wait_for_function("document.querySelector('#ingest-rate').dataset.eventsTotal === '0'")
        assert not page.locator("#token-dialog").is_visible()
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
