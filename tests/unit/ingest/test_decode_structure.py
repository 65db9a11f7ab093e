"""Fuzzing the JSON decoders with arbitrary JSON *documents* (not just bytes): any shape, any
nesting, any number, any string, near-valid events. The decoder either returns a table that
obeys every rule or refuses with a ``BatchRejected`` subclass, never anything else (a deep
nesting once escaped as ``RecursionError``, a 500)."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.decode import decode_events
from ingest.errors import BatchRejected, MalformedBody
from storage.schema import EVENT_SCHEMA

NOW = 1_795_737_600_000_000_000
DAY = 86_400 * 10**9
JSON, NDJSON = "application/json", "application/x-ndjson"

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=300)
)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=30,
)
near_events = st.fixed_dictionaries(
    {},
    optional={
        "timestamp": st.integers(-(2**65), 2**65) | st.integers(NOW - DAY, NOW + DAY) | st.text(max_size=40) | scalars,
        "category": st.text(max_size=140) | scalars,
        "value": st.integers(-(2**64), 2**64) | scalars,
        "producer_id": st.text(max_size=270) | scalars,
        "extra": documents,
    },
)


def _decode(body: bytes, ctype: str) -> pa.Table | None:
    try:
        return decode_events(body, ctype, None, now_ns=NOW)
    except BatchRejected as e:
        assert e.detail
        return None


def _obeys_rules(table: pa.Table) -> None:
    assert table.schema == EVENT_SCHEMA and table.num_rows > 0
    for row in table.to_pylist():
        assert 0 <= row["timestamp"] <= NOW + DAY
        assert 1 <= len(row["category"].encode()) <= 128 and "\0" not in row["category"]
        assert 1 <= len(row["producer_id"].encode()) <= 256 and "\0" not in row["producer_id"]


@settings(max_examples=300, deadline=None)
@given(doc=documents)
def test_any_json_document_is_refused_or_a_valid_table(doc: Any) -> None:
    body = json.dumps(doc).encode()
    for ctype in (JSON, NDJSON):
        table = _decode(body, ctype)
        if table is not None:
            _obeys_rules(table)


@settings(max_examples=300, deadline=None)
@given(events=st.lists(near_events | documents, min_size=1, max_size=6), ndjson=st.booleans())
def test_near_valid_batches_are_refused_or_valid(events: list[Any], ndjson: bool) -> None:
    body = "\n".join(json.dumps(e) for e in events) if ndjson else json.dumps(events)
    table = _decode(body.encode(), NDJSON if ndjson else JSON)
    if table is not None:
        _obeys_rules(table)
        assert table.num_rows == len(events), "a batch is accepted whole or not at all"


@settings(max_examples=30, deadline=None)
@given(depth=st.integers(10, 200_000), opener=st.sampled_from(["[", '{"a":']), ndjson=st.booleans())
def test_deep_nesting_is_malformed_not_a_crash(depth: int, opener: str, ndjson: bool) -> None:
    closer = "]" if opener == "[" else "}"
    body = (opener * depth + "1" + closer * depth).encode()
    try:
        decode_events(body, NDJSON if ndjson else JSON, None, now_ns=NOW)
    except MalformedBody:
        pass
    except BatchRejected as e:  # shallow enough to parse: refused as the wrong shape instead
        assert depth < 10_000, e
    else:
        raise AssertionError("a nested document is never a valid batch")
