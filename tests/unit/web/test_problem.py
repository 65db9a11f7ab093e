"""Every error answer is RFC 9457 problem+json, a bug included: logged with its traceback, never leaked."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from litestar import Litestar, get
from litestar.testing import TestClient
from structlog.testing import LogCapture

from cluster import errors as cluster_errors
from cluster.errors import MembershipError, NotEnoughReplicas, NotServing, PartialResult, PeerError, StaleEpoch
from ingest.errors import BatchRejected, WalCorrupt
from web.problem import PROBLEM_JSON, problem_handlers


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    cap = LogCapture()
    structlog.configure(processors=[cap])
    yield cap
    structlog.reset_defaults()


@get("/bug")
async def _bug() -> dict[str, Any]:
    raise ValueError("secret internals /srv/data/x")


@get("/wal")
async def _wal() -> dict[str, Any]:
    raise WalCorrupt("segment 7 is damaged")


@get("/bad")
async def _bad() -> dict[str, Any]:
    raise BatchRejected("event 3: value must be an integer", row=3, field="value")


@get("/typed")
async def _typed(k: int) -> dict[str, Any]:
    return {"k": k}


APP = Litestar([_bug, _wal, _bad, _typed], exception_handlers=problem_handlers())


def _problem(path: str) -> tuple[int, dict[str, Any]]:
    with TestClient(APP) as http:
        r = http.get(path)
    assert r.headers["content-type"].startswith(PROBLEM_JSON)
    body = r.json()
    assert {"type", "title", "status", "detail"} <= set(body) and body["status"] == r.status_code
    return r.status_code, body


def test_an_unexpected_exception_is_a_500_problem_that_leaks_nothing(logs: LogCapture) -> None:
    status, body = _problem("/bug")
    assert status == 500 and body["type"] == "/problems/internal-error"
    assert "secret" not in str(body)
    logged = [e for e in logs.entries if e["event"] == "unhandled error"]
    assert logged and logged[0]["path"] == "/bug" and isinstance(logged[0]["exc_info"], ValueError)


def test_an_unmapped_tributary_error_is_a_logged_500(logs: LogCapture) -> None:
    status, body = _problem("/wal")
    assert status == 500 and "segment" in body["detail"]
    assert any(e["event"] == "server-side error" for e in logs.entries)


def test_a_refused_batch_names_row_and_field() -> None:
    status, body = _problem("/bad")
    assert status == 422 and body["row"] == 3 and body["field"] == "value"
    assert body["type"] == "/problems/invalid-event"


def test_parameter_validation_and_unknown_routes_are_problems_too() -> None:
    assert _problem("/typed?k=ten")[0] == 400
    assert _problem("/nowhere")[0] == 404


_CLUSTER_ERRORS: dict[str, tuple[Exception, int, str, dict[str, Any], dict[str, str]]] = {
    "membership": (MembershipError("n9 is not a member"), 409, "membership-conflict", {}, {}),
    "stale": (StaleEpoch("routed by map epoch 3; this node has 5", 5), 409, "stale-epoch", {"epoch": 5}, {}),
    "serving": (NotServing("n2 is catching up"), 503, "not-serving", {}, {"retry-after": "1"}),
    "peer": (PeerError("n3 answered 500: boom", "n3", 500), 502, "peer-error", {"node_id": "n3"}, {}),
    "replicas": (NotEnoughReplicas("1 of 2", retry_after=2.0), 503, "not-enough-replicas", {}, {"retry-after": "2"}),
    "partial": (PartialResult("2 shard(s)", [4, 7]), 503, "partial-result", {"missing_shards": [4, 7]}, {}),
}


@get("/cluster/{which:str}")
async def _cluster(which: str) -> dict[str, Any]:
    raise _CLUSTER_ERRORS[which][0]


@pytest.mark.parametrize("which", sorted(_CLUSTER_ERRORS))
def test_every_cluster_error_has_its_status_and_problem_shape(which: str) -> None:
    """Every ``cluster/errors.py`` type is mapped in one place (no per-route handlers needed)."""
    exc, status, slug, extra, headers = _CLUSTER_ERRORS[which]
    with TestClient(Litestar([_cluster], exception_handlers=problem_handlers())) as http:
        r = http.get(f"/cluster/{which}")
    assert r.status_code == status
    assert r.headers["content-type"].startswith(PROBLEM_JSON)
    assert {k: r.headers[k] for k in headers} == headers
    body = r.json()
    assert set(body) == {"type", "title", "status", "detail", *extra}
    assert body["type"] == f"/problems/{slug}" and body["status"] == status and body["title"]
    assert body["detail"] == str(exc)
    assert {k: body[k] for k in extra} == extra


def test_every_cluster_error_type_is_mapped() -> None:
    mapped = {type(e) for e, *_ in _CLUSTER_ERRORS.values()}
    defined = {getattr(cluster_errors, n) for n in cluster_errors.__all__} - {cluster_errors.ClusterError}
    assert defined <= mapped
