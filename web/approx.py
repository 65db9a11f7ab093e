"""Distinct producers, value quantiles and approximate top-k over HTTP (issue 7):
``GET /v1/distinct``, ``GET /v1/quantiles`` and ``GET /v1/topk?approx=true``.

Answers are exact unless the caller sets ``approx=true``; every answer says which it is
(``approximate``), and an approximate one carries its error bounds. Bad parameters (range, k,
q) are ``InvalidQuery``, answered 400 by ``web.problem``.
"""

from __future__ import annotations

import time
from typing import Any

from litestar import get
from litestar.handlers import BaseRouteHandler

from cluster.node import Answer, Node
from query.approxengine import parse_quantiles
from query.errors import InvalidQuery
from query.timerange import parse_range

__all__ = ["approx_routes", "topk_approx"]


def _range(category: str, start: str, end: str) -> tuple[int, int]:
    if not category:
        raise InvalidQuery("category is required")
    return parse_range(start, end, now_ns=time.time_ns())


def _shape(ans: Answer, body: dict[str, Any], approx: bool, t0: float) -> dict[str, Any]:
    return {
        **body,
        "approximate": approx,
        "partial": ans.partial,
        "missing_shards": list(ans.missing_shards),
        "took_ms": round((time.perf_counter() - t0) * 1000, 3),
    }


def topk_approx(node: Node, category: str, start: str, end: str, k: int, strict: bool) -> dict[str, Any]:
    """``GET /v1/topk?approx=true``: each producer's ``count`` is the sketch's estimate, with
    hard ``lower_bound`` / ``upper_bound``; ``guaranteed`` says the set is the exact top-k."""
    t0 = time.perf_counter()
    s, e = _range(category, start, end)
    ans = node.topk(category, s, e, k, strict=strict, approx=True)
    top = ans.value
    assert isinstance(top, dict)
    body = {
        "producers": [
            {
                "producer_id": p["producer_id"],
                "count": p["estimate"],
                "lower_bound": p["lower_bound"],
                "upper_bound": p["upper_bound"],
            }
            for p in top["producers"]
        ],
        "guaranteed": top["guaranteed"],
        "exact": top["exact"],
        "unlisted_upper_bound": top["unlisted_upper_bound"],
        "events": top["events"],
    }
    return _shape(ans, body, True, t0)


def approx_routes(node: Node) -> list[BaseRouteHandler]:
    """The route handlers of ``/v1/distinct`` and ``/v1/quantiles``."""
    max_quantiles = node.config.approx.max_quantiles

    @get("/v1/distinct", sync_to_thread=True, summary="Distinct producers of a category in [start, end)")
    def distinct(category: str, start: str, end: str, approx: bool = False, strict: bool = False) -> dict[str, Any]:
        """Exact by default. With ``approx=true`` a CPC sketch estimate: the true count lies within
        ``[lower_bound, upper_bound]`` with probability ``confidence`` (99.7 %)."""
        t0 = time.perf_counter()
        s, e = _range(category, start, end)
        ans = node.distinct(category, s, e, approx, strict=strict)
        body = dict(ans.value) if isinstance(ans.value, dict) else {"value": ans.value}
        return _shape(ans, body, approx, t0)

    @get("/v1/quantiles", sync_to_thread=True, summary="Quantiles of value for a category in [start, end)")
    def quantiles(
        category: str, start: str, end: str, q: str = "0.5,0.9,0.99", approx: bool = False, strict: bool = False
    ) -> dict[str, Any]:
        """``q``: comma-separated numbers in [0, 1]. Exact by default: for each q the smallest
        value with at least q of the rows at or below it. With ``approx=true`` from KLL
        sketches: each value's true rank is within ``rank_error`` of q with probability
        ``confidence`` (99 %)."""
        t0 = time.perf_counter()
        qs = parse_quantiles(q, max_quantiles)
        s, e = _range(category, start, end)
        ans = node.quantiles(category, s, e, qs, approx, strict=strict)
        assert isinstance(ans.value, dict)
        return _shape(ans, dict(ans.value), approx, t0)

    return [distinct, quantiles]
