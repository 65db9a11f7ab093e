"""RFC 3339 date-times as Unix nanoseconds, the one text form of an event's ``timestamp``.

``parse_rfc3339_ns`` is exact to the nanosecond (no float on the way) and strict: it accepts what
RFC 3339 section 5.6 calls a ``date-time`` and nothing else. Decided here, beyond the RFC's grammar:

- ``T``, ``t`` or a space between date and time (RFC 3339 section 5.6, the note on ISO 8601);
  ``Z``, ``z`` or a ``±HH:MM`` offset, whose hours must be 00..23 and minutes 00..59.
- Up to 9 fractional digits (nanoseconds); more would be a precision we cannot store.
- Leap seconds (``:60``) are refused: Unix time has no such second.

Imports nothing but the standard library: the producer client parses with it too, so the client
refuses at ``send`` exactly the strings the node would refuse.
"""

from __future__ import annotations

import datetime as dt
import re

__all__ = ["parse_rfc3339_ns"]


def parse_rfc3339_ns(text: str) -> int:
    """Unix ns of an RFC 3339 date-time, exact to the nanosecond; ValueError if it is not one."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"is neither an integer of Unix ns nor an RFC 3339 date-time: {text[:64]!r}")
    prefix, frac, sign, oh, om = m.groups()
    secs = _SECONDS.get(prefix)
    if secs is None:
        secs = _local_seconds(prefix)
        if len(_SECONDS) >= 1 << 16:
            _SECONDS.clear()
        _SECONDS[prefix] = secs
    if sign:
        if int(oh) > 23 or int(om) > 59:
            raise ValueError(f"has an out-of-range offset: {text!r}")
        secs -= (1 if sign == "+" else -1) * (int(oh) * 3600 + int(om) * 60)
    return secs * 10**9 + (int(frac.ljust(9, "0")) if frac else 0)


def _local_seconds(prefix: str) -> int:
    """Seconds since 1970 of ``YYYY-MM-DDTHH:MM:SS`` read as UTC."""
    h, mi, s = int(prefix[11:13]), int(prefix[14:16]), int(prefix[17:19])
    if h > 23 or mi > 59 or s > 59:
        raise ValueError(f"has an out-of-range time (leap seconds are refused): {prefix!r}")
    try:
        day = dt.date(int(prefix[0:4]), int(prefix[5:7]), int(prefix[8:10]))
    except ValueError:
        raise ValueError(f"has an impossible date: {prefix!r}") from None
    return (day.toordinal() - _EPOCH_ORDINAL) * 86_400 + h * 3600 + mi * 60 + s


_RFC3339 = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
# Events of one batch mostly share their date-time down to the second: convert each such prefix once.
# Bounded, and a dict is safe enough across threads here: a lost insert only costs a recomputation.
_SECONDS: dict[str, int] = {}
