"""ingest.courier's retry policy: full-jitter backoff, Retry-After, which statuses are retried.

Delivery itself (retries, failover, discovery) is tested through the Producer in test_client.py.
"""

from __future__ import annotations

import email.utils
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.courier import backoff_delay, is_retryable, parse_retry_after


class Top(random.Random):
    """Draws the top of every range: shows the ceiling of the schedule."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_backoff_ceiling_doubles_up_to_the_cap() -> None:
    schedule = [backoff_delay(n, 0.1, 2.0, Top()) for n in range(8)]
    assert schedule == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0])


@given(st.integers(0, 10_000), st.floats(0.001, 5.0), st.floats(0.001, 100.0), st.integers(0, 2**32))
def test_backoff_is_full_jitter_within_zero_and_cap(attempt: int, base: float, cap: float, seed: int) -> None:
    d = backoff_delay(attempt, base, cap, random.Random(seed))
    assert 0.0 <= d <= min(cap, base * 2.0 ** min(attempt, 100))


def test_backoff_jitter_spreads() -> None:
    rng = random.Random(1)
    draws = [backoff_delay(3, 0.1, 10.0, rng) for _ in range(1000)]
    assert max(draws) > 0.7 and min(draws) < 0.1  # uniform over [0, 0.8], not a fixed delay


def test_retry_after_seconds() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after("-3") == 0.0


def test_retry_after_http_date() -> None:
    now = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
    later = email.utils.format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(later, now=now) == 30.0
    assert parse_retry_after("Sat, 01 Mar 2025 11:00:00 GMT", now=now) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "Fri, 99 Foo 2025"])
def test_retry_after_unreadable(value: str | None) -> None:
    assert parse_retry_after(value) is None


@pytest.mark.parametrize(
    ("status", "retry"),
    [(408, True), (425, True), (429, True), (500, True), (502, True), (503, True), (504, True)]
    + [(s, False) for s in (400, 401, 403, 404, 409, 413, 415, 422)],
)
def test_which_statuses_are_retried(status: int, retry: bool) -> None:
    assert is_retryable(status) is retry
