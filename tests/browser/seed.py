"""Known events for the browser tests: what the node is given is the oracle for what pages show."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import httpx

from tests.support.process import NodeProcess

__all__ = ["CATEGORIES", "PRODUCERS", "SEEDED", "Event", "Seeded", "make_events", "post_events"]

CATEGORIES = ("alpha", "beta", "gamma")
PRODUCERS = 20
SEEDED = 3000


@dataclass(frozen=True)
class Event:
    timestamp: int
    category: str
    value: int
    producer_id: str


@dataclass(frozen=True)
class Seeded:
    """The node under test and the events it was given (the oracle)."""

    node: NodeProcess
    events: tuple[Event, ...]

    @property
    def url(self) -> str:
        return self.node.url

    def count(self, category: str) -> int:
        return sum(1 for e in self.events if e.category == category)


def make_events(n: int, now_ns: int, salt: int = 0) -> list[Event]:
    """`n` deterministic events spread over the 50 minutes before `now_ns`; skewed producers."""
    return [
        Event(
            timestamp=now_ns - ((i * 7919 + salt) % (50 * 60)) * 1_000_000_000 - i % 1000,
            category=CATEGORIES[i % len(CATEGORIES)],
            value=(i * 31 + salt) % 1000,
            # Golden-ratio spread, squared: every producer appears, the low numbers most often.
            producer_id=f"p{int(PRODUCERS * ((i * 0.6180339887 + salt) % 1) ** 2):02d}",
        )
        for i in range(n)
    ]


def post_events(url: str, events: list[Event]) -> None:
    body = [asdict(e) for e in events]
    response = httpx.post(f"{url}/v1/events", json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == len(events)
