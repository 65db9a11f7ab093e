"""Time bounds as callers write them: Unix nanoseconds, RFC 3339, or relative to now.

``now``, ``now-15m``, ``now+1h``, ``now-7d`` (units ns, us, ms, s, m, h, d, w) are resolved
against an injected clock, so tests are deterministic.
"""

from __future__ import annotations

import re
from datetime import datetime

from query.errors import InvalidQuery
from storage.schema import HOUR_NS, MINUTE_NS

__all__ = ["ceil_to", "floor_to", "parse_range", "parse_time"]

_UNITS = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": MINUTE_NS,
    "h": HOUR_NS,
    "d": 24 * HOUR_NS,
    "w": 7 * 24 * HOUR_NS,
}
_RELATIVE = re.compile(r"^now(?:\s*([+-])\s*(\d+)\s*(ns|us|ms|s|m|h|d|w))?$")
_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$")


def parse_time(text: str | int, *, now_ns: int, name: str = "time") -> int:
    """Unix ns from an integer, an RFC 3339 string or a ``now±N<unit>`` expression."""
    if isinstance(text, int):
        return text
    t = text.strip()
    if re.fullmatch(r"-?\d+", t):
        v = int(t)
        if not -(2**63) <= v < 2**63:
            raise InvalidQuery(f"{name} is outside the int64 nanosecond range")
        return v
    m = _RELATIVE.match(t)
    if m:
        if m.group(1) is None:
            return now_ns
        delta = int(m.group(2)) * _UNITS[m.group(3)]
        return now_ns + delta if m.group(1) == "+" else now_ns - delta
    m = _RFC3339.match(t)
    if m:
        date, clock, frac, tz = m.groups()
        try:
            dt = datetime.fromisoformat(f"{date}T{clock}{'+00:00' if tz in 'Zz' else tz}")
        except ValueError as e:
            raise InvalidQuery(f"{name}: {e}") from e
        ns = int(dt.timestamp()) * 1_000_000_000
        if frac:
            ns += int(frac.ljust(9, "0"))
        return ns
    raise InvalidQuery(f"{name} {text!r} is not Unix nanoseconds, RFC 3339 or now-<N><unit>")


def parse_range(start: str | int | None, end: str | int | None, *, now_ns: int) -> tuple[int, int]:
    """A half-open ``[start, end)``; refuses start > end."""
    if start is None or start == "":
        raise InvalidQuery("start is required")
    if end is None or end == "":
        raise InvalidQuery("end is required")
    s = parse_time(start, now_ns=now_ns, name="start")
    e = parse_time(end, now_ns=now_ns, name="end")
    if s > e:
        raise InvalidQuery(f"start ({s}) is after end ({e})")
    return s, e


def floor_to(t: int, unit: int) -> int:
    return t - (t % unit)


def ceil_to(t: int, unit: int) -> int:
    return -floor_to(-t, unit)
