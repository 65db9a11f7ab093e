"""Bearer tokens with scopes: who may ingest, who may query, who may administer.

Tokens come from a file (``--tokens-file``) and/or the environment (``TRIBUTARY_TOKENS``), in one
format: one token per line, then its scopes, comma-separated::

    # lines starting with # and blank lines are ignored
    9f2c61d1c0a84e6b93f5a0c2 ingest
    e41b07aa5fd34c4f8f0e6b1d query,ingest
    0c6f3f6e2a9d4d0bb5d8e7a1 admin

In the environment variable, ``;`` separates entries as a newline does. Scopes are ``ingest``,
``query`` and ``admin``; ``admin`` grants every scope. A token is at least 16 characters with no
whitespace. Which scope a request needs is decided by its method and path alone
(``required_scope``), so routes added later are covered without touching this module:

- ``POST /v1/events`` (and anything under it) needs ``ingest``;
- ``/v1/admin/*`` and every ``/v1/cluster...`` request except ``GET``/``HEAD`` need ``admin``;
- every other ``/v1/...`` route (count, sum, topk, sql, export, tables, stats, cluster map)
  needs ``query``;
- ``/metrics`` needs ``query`` only when ``--metrics-auth`` is on;
- ``/health``, ``/ready``, the console pages, ``/assets`` and ``/schema`` are open, and
  ``/internal/*`` (node-to-node) carries the cluster secret instead of a token.

With no token configured nothing is checked (the loopback demo); ``exposure_refusal`` keeps such
a node off the network unless the operator says ``--insecure``. Answers are problem+json: 401
with ``WWW-Authenticate: Bearer`` for a missing or unknown token, 403 for a known token without
the scope. Token comparison is constant-time and looks at every configured token.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from storage.errors import TributaryError
from web.problem import send_problem

__all__ = [
    "SCOPES",
    "AuthMiddleware",
    "InvalidTokens",
    "TokenTable",
    "exposure_refusal",
    "load_tokens",
    "parse_tokens",
    "required_scope",
]

SCOPES = frozenset({"ingest", "query", "admin"})
MIN_TOKEN_CHARS = 16


class InvalidTokens(TributaryError):
    """The token file or TRIBUTARY_TOKENS cannot be read. Fix the named line: ``TOKEN scope[,scope]``,
    a token of at least 16 characters, scopes among ingest, query, admin."""


@dataclass(frozen=True)
class TokenTable:
    """The configured tokens and their scopes. Empty means authentication is off."""

    entries: tuple[tuple[bytes, frozenset[str]], ...] = field(default=(), repr=False)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def scopes_of(self, presented: str) -> frozenset[str] | None:
        """The scopes of ``presented``, or None if it is not a configured token.

        Compares against every token with ``hmac.compare_digest`` and never stops early, so the
        time taken says nothing about which token (or how much of one) matched.
        """
        candidate = presented.encode()
        found: frozenset[str] | None = None
        for token, scopes in self.entries:
            if hmac.compare_digest(token, candidate) and found is None:
                found = scopes
        return found


def parse_tokens(text: str, source: str = "tokens") -> TokenTable:
    """Parse the ``TOKEN scope[,scope]`` format (lines or ``;``-separated entries).

    Raises ``InvalidTokens`` naming the source and entry for anything malformed; a token listed
    twice gets the union of its scopes.
    """
    merged: dict[str, set[str]] = {}
    for n, raw in enumerate(text.replace(";", "\n").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        where = f"{source}, entry {n}"
        if len(parts) != 2:
            raise InvalidTokens(f"{where}: expected 'TOKEN scope[,scope]', got {len(parts)} fields")
        token, scope_list = parts
        if len(token) < MIN_TOKEN_CHARS:
            raise InvalidTokens(f"{where}: a token must be at least {MIN_TOKEN_CHARS} characters")
        scopes = {s.strip().lower() for s in scope_list.split(",") if s.strip()}
        unknown = scopes - SCOPES
        if not scopes or unknown:
            raise InvalidTokens(f"{where}: unknown scope(s) {sorted(unknown)}; use ingest, query, admin")
        merged.setdefault(token, set()).update(scopes)
    return TokenTable(tuple((t.encode(), frozenset(s)) for t, s in merged.items()))


def load_tokens(tokens_file: str | Path | None = None, tokens_env: str | None = None) -> TokenTable:
    """Tokens from the file and the environment value together (either may be empty)."""
    tables = []
    if tokens_file:
        path = Path(tokens_file)
        try:
            text = path.read_text()
        except OSError as e:
            raise InvalidTokens(f"cannot read the tokens file {path}: {e.strerror or e}") from e
        tables.append(parse_tokens(text, str(path)))
    if tokens_env:
        tables.append(parse_tokens(tokens_env, "TRIBUTARY_TOKENS"))
    merged: dict[bytes, frozenset[str]] = {}
    for table in tables:
        for token, scopes in table.entries:
            merged[token] = merged.get(token, frozenset()) | scopes
    return TokenTable(tuple(merged.items()))


def required_scope(method: str, path: str, *, metrics_auth: bool = False) -> str | None:
    """The scope a request needs, by method and path; None when it is open to anyone."""
    if path == "/metrics":
        return "query" if metrics_auth else None
    if not path.startswith("/v1/"):
        return None  # health, ready, console, assets, schema; /internal/ has its own secret
    if path == "/v1/events" or path.startswith("/v1/events/"):
        return "ingest"
    if path.startswith("/v1/admin/") or path == "/v1/admin":
        return "admin"
    if (path == "/v1/cluster" or path.startswith("/v1/cluster/")) and method.upper() not in ("GET", "HEAD"):
        return "admin"
    return "query"


def is_loopback(host: str) -> bool:
    if host.strip().lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_refusal(host: str, tokens: TokenTable, insecure: bool) -> str | None:
    """Why ``serve`` must not start (a non-loopback address with no token and no ``--insecure``),
    or None when it may."""
    if tokens or insecure or is_loopback(host):
        return None
    return (
        f"refusing to serve on {host} without authentication: anyone who can reach it could write "
        "and read every event. Configure tokens (--tokens-file or TRIBUTARY_TOKENS), bind to "
        "127.0.0.1, or pass --insecure to serve open on purpose."
    )


def _bearer(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
            return None
    return None


class AuthMiddleware(ASGIMiddleware):
    """Checks the bearer token of every routed HTTP request against ``required_scope``."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, tokens: TokenTable, *, metrics_auth: bool = False) -> None:
        self.tokens = tokens
        self.metrics_auth = metrics_auth

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if not self.tokens:
            await next_app(scope, receive, send)
            return
        needed = required_scope(str(scope.get("method", "GET")), scope["path"], metrics_auth=self.metrics_auth)
        if needed is None:
            await next_app(scope, receive, send)
            return
        presented = _bearer(scope["headers"])
        if presented is None:
            await send_problem(
                send, 401, "unauthorized", "Unauthorized",
                f"this route needs a bearer token with the {needed!r} scope",
                {"WWW-Authenticate": 'Bearer realm="tributary"'},
            )  # fmt: skip
            return
        granted = self.tokens.scopes_of(presented)
        if granted is None:
            await send_problem(
                send, 401, "unauthorized", "Unauthorized", "the bearer token is not valid",
                {"WWW-Authenticate": 'Bearer realm="tributary", error="invalid_token"'},
            )  # fmt: skip
            return
        if needed not in granted and "admin" not in granted:
            await send_problem(
                send, 403, "forbidden", "Forbidden",
                f"the token's scopes ({', '.join(sorted(granted))}) do not include {needed!r}",
                {"WWW-Authenticate": f'Bearer realm="tributary", error="insufficient_scope", scope="{needed}"'},
            )  # fmt: skip
            return
        await next_app(scope, receive, send)
