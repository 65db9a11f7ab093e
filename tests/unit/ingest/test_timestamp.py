"""ingest.timestamp: RFC 3339 date-times to Unix ns, exactly, and nothing else."""

from __future__ import annotations

import calendar
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.timestamp import parse_rfc3339_ns


def utc_ns(*ymdhms: int, frac_ns: int = 0, offset_s: int = 0) -> int:
    return (calendar.timegm((*ymdhms, 0, 0, 0)) - offset_s) * 10**9 + frac_ns


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2026-11-27T10:00:00.123456789Z", utc_ns(2026, 11, 27, 10, 0, 0, frac_ns=123_456_789)),
        ("2026-11-27T10:00:00.123456789+02:00", utc_ns(2026, 11, 27, 10, 0, 0, frac_ns=123_456_789, offset_s=7200)),
        ("2026-11-27T10:00:00-05:30", utc_ns(2026, 11, 27, 10, 0, 0, offset_s=-19_800)),
        ("2026-11-27t10:00:00.5z", utc_ns(2026, 11, 27, 10, 0, 0, frac_ns=500_000_000)),
        ("2026-11-27 10:00:00.000000001-00:00", utc_ns(2026, 11, 27, 10, 0, 0, frac_ns=1)),
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T01:00:00+01:00", 0),
        ("2024-02-29T23:59:59.999999999Z", utc_ns(2024, 2, 29, 23, 59, 59, frac_ns=999_999_999)),
        ("2262-04-11T23:47:16.854775807Z", 2**63 - 1),
    ],
)
def test_rfc3339_exact(text: str, ns: int) -> None:
    assert parse_rfc3339_ns(text) == ns


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("yesterday", "neither an integer"),
        ("2026-01-01T00:00:00", "neither an integer"),  # no offset: local time is ambiguous
        ("2026-01-01T00:00:00.1234567891Z", "neither an integer"),  # below a nanosecond
        ("2026-01-01T00:00:00Z ", "neither an integer"),
        ("2016-12-31T23:59:60Z", "leap seconds"),
        ("2026-01-01T24:00:00Z", "out-of-range time"),
        ("2026-02-30T00:00:00Z", "impossible date"),
        ("2026-01-01T00:00:00+24:00", "out-of-range offset"),
        ("2026-01-01T00:00:00+01:60", "out-of-range offset"),
    ],
)
def test_refusals_say_why(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_rfc3339_ns(text)


@given(
    ns=st.integers(0, 2**63 - 1),
    offset_min=st.integers(-(23 * 60 + 59), 23 * 60 + 59),
    sep=st.sampled_from("Tt "),
)
def test_matches_the_datetime_oracle(ns: int, offset_min: int, sep: str) -> None:
    secs, frac = divmod(ns, 10**9)
    local = dt.datetime.fromtimestamp(secs, dt.timezone(dt.timedelta(minutes=offset_min)))
    sign = "-" if offset_min < 0 else "+"
    hh, mm = divmod(abs(offset_min), 60)
    text = local.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + f".{frac:09d}{sign}{hh:02d}:{mm:02d}"
    assert parse_rfc3339_ns(text) == ns
