"""Fixtures for the browser tests: one real node seeded with known events, headless Chromium.

The node is started once per session (the machine is small) and seeded with `SEEDED` events
whose timestamps fall in the last hour, so every answer the pages show has an oracle here.
Each test gets a fresh browser context (its own localStorage); a JavaScript error on the page
fails the test. Screenshots go to `test-artifacts/` at the repository root.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.browser.seed import SEEDED, Seeded, make_events, post_events
from tests.support.process import REPO, NodeProcess
from web.assets import BUILD_COMMAND, missing_assets

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="session")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    node = NodeProcess(tmp_path_factory.mktemp("browser-node"), name="browser")
    with node:
        events = make_events(SEEDED, time.time_ns())
        for start in range(0, len(events), 1000):
            post_events(node.url, events[start : start + 1000])
        yield Seeded(node, tuple(events))


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium")
    missing = missing_assets()
    if missing:
        pytest.skip(f"console assets not built (missing {', '.join(missing)}); run `just assets` or {BUILD_COMMAND}")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, seeded: Seeded) -> Iterator[Page]:
    """A page in a fresh context; fails the test if the page threw a JavaScript error."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 900}, base_url=seeded.url)
    context.set_default_timeout(20_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
