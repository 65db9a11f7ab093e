"""Every setting is documented in docs/operations.md and has a ``tributary serve`` flag."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from web.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "operations.md"
NOT_FLAGS = {"extra"}  # an internal bag, not a knob


def _fields() -> list[str]:
    return [f.name for f in dataclasses.fields(Settings) if f.name not in NOT_FLAGS]


@pytest.mark.parametrize("name", _fields())
def test_the_setting_has_a_row_in_the_operations_table(name: str) -> None:
    rows = re.findall(r"^\| `([a-z0-9_]+)` \|", DOC.read_text(), flags=re.MULTILINE)
    assert name in rows, f"docs/operations.md has no table row for setting {name!r}"


def _serve_options() -> dict[str, str | None]:
    """Parameter name -> environment variable of each ``tributary serve`` option (via click)."""
    import typer.main

    from web.cli import app

    group = typer.main.get_command(app)
    serve = group.commands["serve"]  # type: ignore[attr-defined]
    return {p.name: p.envvar for p in serve.params}


@pytest.mark.parametrize("name", _fields())
def test_the_setting_is_a_serve_flag_with_an_environment_twin(name: str) -> None:
    options = _serve_options()
    assert name in options, f"tributary serve has no --{name.replace('_', '-')} flag"
    assert options[name] == f"TRIBUTARY_{name.upper()}", f"{name}: environment twin is {options[name]!r}"
