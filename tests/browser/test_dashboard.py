"""The dashboard in headless Chromium: its numbers grow while events arrive; nodes and producers show."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page

from tests.browser.seed import Seeded, make_events, post_events

pytestmark = pytest.mark.browser


def events_total(page: Page) -> int | None:
    value = page.get_attribute("#ingest-rate", "data-events-total")
    return int(value) if value else None


def test_events_total_grows_while_events_are_posted(page: Page, seeded: Seeded, artifacts: Path) -> None:
    page.goto("/dashboard")
    page.wait_for_function("document.querySelector('#ingest-rate').dataset.eventsTotal !== ''")
    first = events_total(page)
    assert first is not None and first >= len(seeded.events)

    # Post small batches (another category, so the console tests' oracle stays intact) until the
    # page, polling /v1/stats every 2 s, shows a larger total and a rate.
    deadline = time.monotonic() + 60
    batch = 0
    while (events_total(page) or 0) <= first or not page.get_attribute("#ingest-rate", "data-rate"):
        assert time.monotonic() < deadline, f"events total stuck at {events_total(page)}"
        fresh = make_events(200, time.time_ns(), salt=batch)
        post_events(seeded.url, [dataclasses.replace(e, category="live") for e in fresh])
        batch += 1
        page.wait_for_timeout(500)
    assert (events_total(page) or 0) >= first + 200
    assert page.locator("#events-total").inner_text().replace(",", "").isdigit()
    assert page.locator("#rate-chart canvas").count() >= 1

    nodes = page.locator("#nodes tbody tr")
    nodes.first.wait_for()
    assert nodes.count() == 1
    assert nodes.first.get_attribute("data-up") == "true"

    producers = page.locator("#top-producers tbody tr")
    producers.first.wait_for()
    assert 1 <= producers.count() <= 10
    page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)
