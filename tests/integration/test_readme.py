"""The README's examples, run as written against a real node (STYLE: "README examples are run by a
test").

The fenced ``sh`` blocks under "Using it" run line by line, in order, then the ``python`` block;
each command must exit 0, and each ``curl`` must be answered 200 with the shape docs/api.md gives.
Set-up lines (``pip install``, ``just ...``) are skipped: CI runs them itself. The node is started
by ``NodeProcess`` with the flags of the README's own ``serve`` line, and the commands reach it
through the substitutions below, each of which must still match the README.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.process import REPO, NodeFactory, NodeProcess

pytestmark = pytest.mark.integration

README = REPO / "README.md"
README_PORT = "8321"
SECTION = "Using it"
SET_UP = ("pip ", "just ")


def substitutions(node: NodeProcess) -> dict[str, str]:
    """What the test changes in a README line before running it, and why."""
    return {
        # The same program without `uv run`, which could sync the environment in the middle of a test.
        "uv run tributary": f"{shlex.quote(sys.executable)} -m web.cli",
        # A bounded load: a million events at 50k/s is a 20 s demo, not a test.
        "--events 1000000 --rate 50000": "--events 5000 --rate 0",
        # The README's node listens on 8321; the test's node on a free port.
        f":{README_PORT}": f":{node.port}",
    }


@dataclass(frozen=True)
class Block:
    lang: str
    section: str
    text: str


def blocks(markdown: str) -> list[Block]:
    """The fenced code blocks of ``markdown`` with their language and the ``##`` section they sit in."""
    found: list[Block] = []
    section, lang, lines = "", None, []
    for line in markdown.splitlines():
        if lang is None and line.startswith("## "):
            section = line[3:].strip()
        elif lang is None and line.startswith("```"):
            lang, lines = line[3:].strip(), []
        elif lang is not None and line.startswith("```"):
            found.append(Block(lang, section, "\n".join(lines)))
            lang = None
        elif lang is not None:
            lines.append(line)
    return found


def commands(sh: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, blank lines dropped."""
    return [c.strip() for c in sh.replace("\\\n", " ").splitlines() if c.strip()]


def test_readme_blocks_are_found() -> None:
    found = blocks(README.read_text())
    assert [b.lang for b in found if b.section == SECTION] == ["sh", "sh", "python"]


def test_readme_examples_run(node_factory: NodeFactory, tmp_path: Path) -> None:
    found = [b for b in blocks(README.read_text()) if b.section == SECTION]
    sh = [c for b in found if b.lang == "sh" for c in commands(b.text) if not c.startswith(SET_UP)]
    python = [b.text for b in found if b.lang == "python"]
    serve = [c for c in sh if shlex.split(c, comments=True)[:4] == ["uv", "run", "tributary", "serve"]]
    assert len(serve) == 1, f"expected one `tributary serve` line under {SECTION!r}, found {serve}"
    node = node_factory("readme", args=_serve_flags(serve[0]))
    subs = substitutions(node)
    used: set[str] = set()

    def substitute(text: str) -> str:
        for old, new in subs.items():
            if old in text:
                used.add(old)
                text = text.replace(old, new)
        return text

    env = {**os.environ, "TRIBUTARY_URL": node.url}  # the CLI's default URL is the README's port
    for line in sh:
        if line in serve:
            continue
        argv = shlex.split(substitute(line), comments=True)
        if argv[0] == "curl":
            _check_curl(argv)
            continue
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{line}\nexited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        if argv[3:4] == ["query"]:
            assert "cat00" in done.stdout, f"{line}\nprinted no answer:\n{done.stdout}"

    before = _stats(node)["events_total"]
    for code in python:
        done = subprocess.run(
            [sys.executable, "-c", substitute(code)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{code}\nexited {done.returncode}:\n{done.stderr}"
        assert "refused" not in done.stderr, done.stderr  # the producer logs a batch it could not deliver
    assert _stats(node)["events_total"] > before, "the Python example delivered nothing"
    assert used == set(subs), f"substitutions that no longer match the README: {set(subs) - used}"


def _serve_flags(line: str) -> list[str]:
    """The README's serve flags other than --data/--port, which NodeProcess sets itself."""
    argv = shlex.split(line, comments=True)[4:]
    flags: list[str] = []
    i = 0
    while i < len(argv):
        name, _, inline = argv[i].partition("=")
        takes_value = not inline and i + 1 < len(argv) and not argv[i + 1].startswith("--")
        if name not in ("--data", "--port", "--host"):
            flags += argv[i : i + 1 + takes_value]
        i += 1 + takes_value
    return flags


def _check_curl(argv: list[str]) -> None:
    """Run curl as written, adding only what reports the status; check the answer's shape."""
    done = subprocess.run(
        [*argv, "--silent", "--show-error", "--write-out", "\n%{http_code}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"{argv}\nexited {done.returncode}: {done.stderr}"
    body, _, status = done.stdout.rpartition("\n")
    assert status == "200", f"{argv}\nanswered {status}: {body}"
    doc = json.loads(body)
    path = next(a for a in argv if "/v1/" in a).split("/v1/", 1)[1].split("?")[0]
    _SHAPES[path](doc)


def _events_shape(doc: dict[str, Any]) -> None:
    assert doc == {"accepted": 1, "duplicate": False}


def _aggregate_shape(doc: dict[str, Any]) -> None:
    assert isinstance(doc["value"], int)
    assert doc["partial"] is False and doc["missing_shards"] == []
    assert isinstance(doc["took_ms"], int | float)


def _topk_shape(doc: dict[str, Any]) -> None:
    assert doc["partial"] is False and doc["missing_shards"] == []
    assert isinstance(doc["producers"], list)
    for p in doc["producers"]:
        assert isinstance(p["producer_id"], str) and isinstance(p["count"], int) and p["count"] > 0


_SHAPES = {"events": _events_shape, "count": _aggregate_shape, "sum": _aggregate_shape, "topk": _topk_shape}


def _stats(node: NodeProcess) -> dict[str, Any]:
    r = httpx.get(node.url + "/v1/stats", timeout=10)
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


def test_commands_join_continuations_and_skip_blank_lines() -> None:
    assert commands("a \\\n  b\n\nc  # note\n") == ["a    b", "c  # note"]


def test_serve_flags_keep_only_what_nodeprocess_does_not_set() -> None:
    line = "uv run tributary serve --data ./data --port 8321 --fsync --rf=1 --persist-bytes 9  # x"
    assert _serve_flags(line) == ["--fsync", "--rf=1", "--persist-bytes", "9"]


def test_blocks_know_their_section() -> None:
    md = "## A\n```sh\nx\n```\n## B\n```python\ny\n```\n"
    assert blocks(md) == [Block("sh", "A", "x"), Block("python", "B", "y")]
