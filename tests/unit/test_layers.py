"""The house rule: imports point down only (web -> cluster -> query -> ingest -> storage).

Walks every module's imports with ``ast``; an upward import fails the test and names the line.
The producer client is the far end of the wire and may import only ``storage.schema``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["storage", "ingest", "query", "cluster", "web"]  # bottom to top


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _modules() -> list[Path]:
    return sorted(p for layer in LAYERS for p in (ROOT / layer).rglob("*.py") if "node_modules" not in p.parts)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path) -> None:
    own = LAYERS.index(path.relative_to(ROOT).parts[0])
    for line, name in _imports(path):
        top = name.split(".")[0]
        if top in LAYERS:
            assert LAYERS.index(top) <= own, f"{path.relative_to(ROOT)}:{line} imports {name} (upward)"


# The producer client and the modules it is made of: together they may import only the schema.
CLIENT = ["client.py", "outbox.py", "courier.py", "spool.py"]
# Modules the client shares with the server; held to the same rule.
SHARED = ["timestamp.py"]


@pytest.mark.parametrize("module", CLIENT + SHARED)
def test_producer_client_imports_only_the_schema(module: str) -> None:
    allowed = {"storage.schema", "ingest"} | {f"ingest.{m.removesuffix('.py')}" for m in CLIENT + SHARED}
    for line, name in _imports(ROOT / "ingest" / module):
        if name.split(".")[0] in LAYERS:
            assert name in allowed, f"{module}:{line} imports {name}"


def test_http_lives_in_web_and_the_peer_client() -> None:
    """Below cluster/ nothing speaks HTTP, except the producer client (the far end of the wire)."""
    allowed = {ROOT / "ingest" / m for m in CLIENT}
    for layer in ["storage", "ingest", "query"]:
        for path in (ROOT / layer).rglob("*.py"):
            if path in allowed:
                continue
            for line, name in _imports(path):
                assert name.split(".")[0] not in {"litestar", "httpx", "uvicorn"}, (
                    f"{path.relative_to(ROOT)}:{line} imports {name}"
                )


def test_an_upward_import_is_caught(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("from web.app import create_app\n")
    assert (1, "web.app") in _imports(bad)
