"""Where the built SQL console and dashboard live, and whether they are built.

Vite builds `web/console/` into `web/static/dist/` (`just assets`); the app mounts that directory at
`ASSETS_URL` and serves `CONSOLE_PAGE` at `/` and `DASHBOARD_PAGE` at `/dashboard`. The built pages
reference their scripts as `/assets/<file>`, so the mount point is fixed by the build (see
`web/console/vite.config.js`). No HTTP here: this module only names files.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "ASSETS_DIR",
    "ASSETS_URL",
    "BUILD_COMMAND",
    "CONSOLE_PAGE",
    "DASHBOARD_PAGE",
    "assets_built",
    "missing_assets",
    "not_built_page",
    "page_path",
]

ASSETS_DIR = Path(__file__).resolve().parent / "static" / "dist"
"""The Vite output directory; gitignored, produced by `BUILD_COMMAND`."""

ASSETS_URL = "/assets"
"""The URL path the app mounts `ASSETS_DIR` at; must match `base` in `web/console/vite.config.js`."""

CONSOLE_PAGE = "index.html"
DASHBOARD_PAGE = "dashboard.html"

BUILD_COMMAND = "npm ci --prefix web/console && npm run --prefix web/console build"
"""Builds the assets from the committed lockfile (what `just assets` runs); needs Node 20.19+."""

# Script, stylesheet and icon references Vite writes into the built pages.
_REFERENCE = re.compile(r"""(?:src|href)=["']/assets/([^"'?#]+)["']""")


def page_path(name: str, directory: Path = ASSETS_DIR) -> Path:
    """The built file for page `name` (`CONSOLE_PAGE` or `DASHBOARD_PAGE`); it may not exist yet."""
    if name not in (CONSOLE_PAGE, DASHBOARD_PAGE):
        raise ValueError(f"unknown page {name!r}; expected {CONSOLE_PAGE!r} or {DASHBOARD_PAGE!r}")
    return directory / name


def missing_assets(directory: Path = ASSETS_DIR) -> list[str]:
    """Files the pages need that are absent, relative to `directory`; empty when the build is whole.

    A page that exists but names a bundle that does not (a half-copied or stale build) counts as
    missing that bundle, so a check that passes means the pages will load.
    """
    missing: list[str] = []
    for page in (CONSOLE_PAGE, DASHBOARD_PAGE):
        path = directory / page
        if not path.is_file():
            missing.append(page)
            continue
        for reference in _REFERENCE.findall(path.read_text(encoding="utf-8")):
            if not (directory / reference).is_file() and reference not in missing:
                missing.append(reference)
    return missing


def assets_built(directory: Path = ASSETS_DIR) -> bool:
    """True when both pages and every file they reference are present in `directory`."""
    return not missing_assets(directory)


def not_built_page() -> str:
    """A small HTML page for `/` and `/dashboard` when the assets are missing, saying how to build them."""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Tributary</title></head>"
        "<body style='font-family:system-ui,sans-serif;max-width:40em;margin:4em auto;line-height:1.5'>"
        "<h1>The console is not built yet</h1>"
        "<p>The HTTP API works; the web pages need a one-time build with Node 20.19 or newer:</p>"
        f"<pre>just assets\n# or: {BUILD_COMMAND}</pre>"
        "<p>Then reload this page.</p></body></html>"
    )
