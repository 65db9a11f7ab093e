"""Tokens and scopes: parsing, the route -> scope rule, and the middleware's answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar, get, post
from litestar.testing import TestClient

from web.auth import (
    AuthMiddleware,
    InvalidTokens,
    TokenTable,
    exposure_refusal,
    load_tokens,
    parse_tokens,
    required_scope,
)
from web.problem import PROBLEM_JSON, problem_handlers

ING, QRY, ADM = "ingest-token-0123456789", "query-token-0123456789", "admin-token-0123456789"
TOKENS = f"{ING} ingest\n{QRY} query\n{ADM} admin\n"


def test_parse_the_line_format_with_comments_and_blank_lines() -> None:
    table = parse_tokens(f"# tokens\n\n  {ING}   ingest,query \n{ADM} admin\n")
    assert len(table) == 2
    assert table.scopes_of(ING) == {"ingest", "query"}
    assert table.scopes_of(ADM) == {"admin"}
    assert table.scopes_of("x" * 24) is None
    assert table.scopes_of(ING[:-1]) is None, "a prefix of a token is not the token"
    assert table.scopes_of(ING + "x") is None


def test_semicolons_separate_entries_like_newlines() -> None:
    table = parse_tokens(f"{ING} ingest; {QRY} query;")
    assert table.scopes_of(ING) == {"ingest"} and table.scopes_of(QRY) == {"query"}


def test_a_token_listed_twice_gets_the_union_of_its_scopes() -> None:
    assert parse_tokens(f"{ING} ingest\n{ING} query").scopes_of(ING) == {"ingest", "query"}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("short ingest", "at least 16"),
        (f"{ING}", "expected 'TOKEN scope"),
        (f"{ING} ingest query", "expected 'TOKEN scope"),
        (f"{ING} write", "unknown scope"),
        (f"{ING} ingest,root", "unknown scope"),
        (f"{ING} ,", "unknown scope"),
    ],
)
def test_malformed_entries_are_refused_naming_the_entry(text: str, says: str) -> None:
    with pytest.raises(InvalidTokens, match=says) as e:
        parse_tokens(f"# first line\n{text}", "tokens.txt")
    assert "tokens.txt, entry 2" in str(e.value)


def test_file_and_environment_merge(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text(f"{ING} ingest\n")
    table = load_tokens(f, f"{ING} query;{ADM} admin")
    assert table.scopes_of(ING) == {"ingest", "query"}
    assert table.scopes_of(ADM) == {"admin"}
    assert not load_tokens(None, "") and not load_tokens("", None)


def test_an_unreadable_file_is_an_invalid_tokens_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidTokens, match="cannot read"):
        load_tokens(tmp_path / "missing")


def test_the_table_never_shows_its_tokens() -> None:
    assert ING not in repr(parse_tokens(f"{ING} ingest"))


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("POST", "/v1/events", "ingest"),
        ("GET", "/v1/count", "query"),
        ("GET", "/v1/sum", "query"),
        ("GET", "/v1/topk", "query"),
        ("POST", "/v1/sql", "query"),
        ("POST", "/v1/sql/cancel", "query"),
        ("GET", "/v1/export", "query"),
        ("GET", "/v1/tables", "query"),
        ("GET", "/v1/stats", "query"),
        ("GET", "/v1/cluster", "query"),
        ("HEAD", "/v1/cluster", "query"),
        ("POST", "/v1/cluster/nodes", "admin"),
        ("DELETE", "/v1/cluster/nodes/n2", "admin"),
        ("POST", "/v1/admin/persist", "admin"),
        ("POST", "/v1/admin/compact", "admin"),
        ("GET", "/v1/some-future-route", "query"),
        ("GET", "/health", None),
        ("GET", "/ready", None),
        ("GET", "/", None),
        ("GET", "/dashboard", None),
        ("GET", "/assets/app.js", None),
        ("GET", "/schema/openapi.json", None),
        ("POST", "/internal/replicate", None),
        ("GET", "/metrics", None),
        ("GET", "/v1", None),
        ("GET", "/v1events", None),
    ],
)
def test_required_scope_by_method_and_path(method: str, path: str, scope: str | None) -> None:
    assert required_scope(method, path) == scope


def test_metrics_needs_the_query_scope_only_when_configured() -> None:
    assert required_scope("GET", "/metrics", metrics_auth=True) == "query"
    assert required_scope("GET", "/metrics", metrics_auth=False) is None


@pytest.mark.parametrize(
    ("host", "tokens", "insecure", "refused"),
    [
        ("127.0.0.1", False, False, False),
        ("127.0.0.2", False, False, False),
        ("::1", False, False, False),
        ("[::1]", False, False, False),
        ("localhost", False, False, False),
        ("0.0.0.0", False, False, True),
        ("::", False, False, True),
        ("10.1.2.3", False, False, True),
        ("node1.example.com", False, False, True),
        ("0.0.0.0", True, False, False),
        ("0.0.0.0", False, True, False),
    ],
)
def test_exposure_needs_tokens_or_insecure_off_loopback(host: str, tokens: bool, insecure: bool, refused: bool) -> None:
    table = parse_tokens(f"{ING} ingest") if tokens else TokenTable()
    why = exposure_refusal(host, table, insecure)
    assert (why is not None) == refused
    if why:
        assert "--insecure" in why and host in why


# -- the middleware, on a small app with the real problem handlers ---------------------------


@post("/v1/events", status_code=200)
async def _ingest() -> dict[str, Any]:
    return {"accepted": 1}


@get("/v1/count")
async def _count() -> dict[str, Any]:
    return {"value": 0}


@post("/v1/admin/persist", status_code=200)
async def _persist() -> dict[str, Any]:
    return {"rows_persisted": 0}


@get("/health")
async def _health() -> dict[str, Any]:
    return {"status": "ok"}


@get("/metrics")
async def _metrics() -> str:
    return "tributary_up 1\n"


def _app(tokens: str, metrics_auth: bool = False) -> Litestar:
    return Litestar(
        [_ingest, _count, _persist, _health, _metrics],
        middleware=[AuthMiddleware(parse_tokens(tokens), metrics_auth=metrics_auth)],
        exception_handlers=problem_handlers(),
    )


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("method", "path", "token", "status"),
    [
        ("POST", "/v1/events", ING, 200),
        ("POST", "/v1/events", QRY, 403),
        ("POST", "/v1/events", ADM, 200),
        ("GET", "/v1/count", QRY, 200),
        ("GET", "/v1/count", ING, 403),
        ("GET", "/v1/count", ADM, 200),
        ("POST", "/v1/admin/persist", ADM, 200),
        ("POST", "/v1/admin/persist", QRY, 403),
        ("POST", "/v1/admin/persist", ING, 403),
        ("GET", "/health", None, 200),
        ("GET", "/metrics", None, 200),
        ("GET", "/v1/count", None, 401),
        ("GET", "/v1/count", "not-a-configured-token", 401),
    ],
)
def test_each_scope_opens_its_routes_only(method: str, path: str, token: str | None, status: int) -> None:
    with TestClient(_app(TOKENS)) as http:
        r = http.request(method, path, headers=_bearer(token) if token else {})
    assert r.status_code == status, r.text
    if status >= 400:
        assert r.headers["content-type"].startswith(PROBLEM_JSON)
        body = r.json()
        assert body["status"] == status and body["type"].startswith("/problems/") and body["detail"]
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_401_says_what_is_missing_and_403_names_the_scope() -> None:
    with TestClient(_app(TOKENS)) as http:
        missing = http.get("/v1/count")
        wrong = http.get("/v1/count", headers=_bearer("x" * 30))
        scoped = http.get("/v1/count", headers=_bearer(ING))
    assert missing.json()["type"] == "/problems/unauthorized" and "'query'" in missing.json()["detail"]
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert scoped.json()["type"] == "/problems/forbidden" and "'query'" in scoped.json()["detail"]
    assert 'error="insufficient_scope"' in scoped.headers["www-authenticate"]


@pytest.mark.parametrize("header", [f"Basic {ING}", f"Bearer{ING}", "Bearer ", ING, f"Token {ING}"])
def test_anything_but_a_bearer_credential_is_unauthorized(header: str) -> None:
    with TestClient(_app(TOKENS)) as http:
        assert http.get("/v1/count", headers={"Authorization": header}).status_code == 401


def test_the_scheme_is_case_insensitive() -> None:
    with TestClient(_app(TOKENS)) as http:
        assert http.get("/v1/count", headers={"Authorization": f"bearer {QRY}"}).status_code == 200


def test_metrics_auth_closes_metrics() -> None:
    with TestClient(_app(TOKENS, metrics_auth=True)) as http:
        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers=_bearer(QRY)).status_code == 200
        assert http.get("/health").status_code == 200


def test_no_tokens_means_everything_is_open() -> None:
    with TestClient(_app("")) as http:
        assert http.post("/v1/events").status_code == 200
        assert http.post("/v1/admin/persist").status_code == 200
        assert http.get("/v1/count", headers=_bearer("whatever-it-is-here")).status_code == 200
