"""The DuckDB scan of JSON bodies: it returns exactly what msgspec decodes, or None.

The oracle is msgspec's typed decode, the path ``ingest.decode`` falls back to. The scan may
decline a body msgspec accepts (the fallback then takes it), but it must never return a table
msgspec would not, and never a different one.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import msgspec
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import decode as decode_module
from ingest.decode import decode_events
from ingest.jsonscan import scan

NOW = 1_800_000_000 * 10**9
FIELDS = ("timestamp", "category", "value", "producer_id")


def oracle(body: bytes, ndjson: bool) -> list[dict[str, Any]] | None:
    """What msgspec's typed decode makes of the body, or None where it refuses it."""
    try:
        events = decode_module._LINE.decode_lines(body) if ndjson else decode_module._ARRAY.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    rows = [msgspec.structs.asdict(e) for e in events]
    if not rows or any(type(r["timestamp"]) is not int or not -(2**63) <= r["value"] < 2**63 for r in rows):
        return None
    return rows


def scanned(body: bytes, ndjson: bool) -> list[dict[str, Any]] | None:
    table = scan(body, ndjson=ndjson)
    if table is None:
        return None
    assert table.column_names == list(FIELDS)
    assert [f.type for f in table.schema] == [pa.int64(), pa.string(), pa.int64(), pa.string()]
    return table.to_pylist()


def line(**fields: Any) -> bytes:
    event = {"timestamp": 1, "category": "a", "value": 1, "producer_id": "p"}
    event.update(fields)
    return json.dumps({k: v for k, v in event.items() if v is not MISSING}).encode()


MISSING = object()

# The reader is lenient about each of these (it rounds, casts, reads keys as it likes); the scan
# must leave every one of them to msgspec.
DECLINED = {
    "value-fraction": line(value=1.5),
    "value-integral-float": line(value=1.0),
    "value-exponent": b'{"timestamp":1,"category":"a","value":1e3,"producer_id":"p"}',
    "value-bool": line(value=True),
    "value-string": line(value="12"),
    "value-null": line(value=None),
    "value-missing": line(value=MISSING),
    "value-over-int64": line(value=2**63),
    "value-over-uint64": line(value=2**64),
    "ts-rfc3339": line(timestamp="2026-01-01T00:00:00Z"),
    "ts-float": line(timestamp=1.0),
    "category-number": line(category=5),
    "category-object": line(category={"x": 1}),
    "category-array": line(category=["x"]),
    "category-null": line(category=None),
    "producer-bool": line(producer_id=False),
    "key-other-case": b'{"TIMESTAMP":1,"category":"a","value":1,"producer_id":"p"}',
    "duplicate-key": b'{"timestamp":1,"category":"a","value":1,"value":2,"producer_id":"p"}',
    "lone-surrogate": line(category="a\\ud800").replace(b"\\\\", b"\\"),
    "invalid-utf8": line(category="a").replace(b'"a"', b'"a\xff"'),
    "not-an-object": line() + b"\n[1, 2]",
    "two-on-a-line": line() + b" " + line(),
    "truncated": line()[:-3],
    "comment": line() + b"\n// no",
    "blank": b"\n\n",
}


@pytest.mark.parametrize("name", sorted(DECLINED))
def test_what_the_reader_would_bend_is_declined(name: str) -> None:
    assert scanned(DECLINED[name], ndjson=True) is None


@pytest.mark.parametrize("body", [b"[]", b"{}", b'{"timestamp":1}', b"[1]", b"", b"[" + line()])
def test_json_arrays_it_cannot_vouch_for_are_declined(body: bytes) -> None:
    assert scanned(body, ndjson=False) is None


def test_a_plain_body_is_scanned() -> None:
    """The fast path is taken: without this the scan could decline everything and every other
    test here would still pass."""
    body = b"\n".join(line(timestamp=i, value=-i, category=f"c{i % 3}", producer_id=f"p{i}") for i in range(1000))
    rows = scanned(body, ndjson=True)
    assert rows == oracle(body, ndjson=True)
    assert rows is not None and len(rows) == 1000


_text_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
events = st.lists(
    st.fixed_dictionaries(
        {
            "timestamp": st.integers(0, 2**63 - 1),
            "category": st.text(_text_chars, min_size=0, max_size=20),
            "value": st.integers(-(2**63), 2**63 - 1),
            "producer_id": st.text(_text_chars, min_size=0, max_size=20),
        },
        optional={"extra": st.integers() | st.text(max_size=5) | st.lists(st.integers(), max_size=3)},
    ),
    min_size=1,
    max_size=25,
)


def spell(event: dict[str, Any], ascii_only: bool, spaced: bool, reverse: bool) -> str:
    items = list(event.items())[::-1] if reverse else list(event.items())
    sep = (", ", ": ") if spaced else (",", ":")
    return json.dumps(dict(items), ensure_ascii=ascii_only, separators=sep)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=events, ascii_only=st.booleans(), spaced=st.booleans(), reverse=st.booleans(), ndjson=st.booleans())
def test_scan_equals_msgspec_on_valid_bodies(
    batch: list[dict[str, Any]], ascii_only: bool, spaced: bool, reverse: bool, ndjson: bool
) -> None:
    texts = [spell(e, ascii_only, spaced, reverse) for e in batch]
    body = ("\n".join(texts) if ndjson else "[" + ",\n ".join(texts) + "]").encode()
    want = oracle(body, ndjson)
    assert want is not None
    got = scanned(body, ndjson)
    assert got is not None, "a body of plain events must be scanned, not declined"
    assert got == want


bad_values = st.sampled_from(
    [1.5, 1.0, -0.0, True, False, None, "7", "", [1], {"a": 1}, 2**63, -(2**63) - 1, 2**64, 1e300]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=events, data=st.data(), ndjson=st.booleans())
def test_scan_never_returns_what_msgspec_would_not(
    batch: list[dict[str, Any]], data: st.DataObject, ndjson: bool
) -> None:
    row = data.draw(st.integers(0, len(batch) - 1))
    field = data.draw(st.sampled_from(FIELDS))
    batch[row] = dict(batch[row], **{field: data.draw(bad_values)})
    if data.draw(st.booleans()):
        del batch[row][field]
    texts = [json.dumps(e) for e in batch]
    body = ("\n".join(texts) if ndjson else "[" + ",".join(texts) + "]").encode()
    got = scanned(body, ndjson)
    if got is not None:
        assert got == oracle(body, ndjson)


def test_decode_events_falls_back_to_msgspec(monkeypatch: pytest.MonkeyPatch) -> None:
    """A body the scan declines is decoded all the same, by msgspec, to the table the scan makes
    of its plain twin."""
    plain = b"\n".join(line(timestamp=NOW + i, value=i) for i in range(5))
    spelled = plain.replace(b'"timestamp": %d' % NOW, b'"timestamp": "2027-01-15T08:00:00Z"')
    assert scan(spelled, ndjson=True) is None
    table = decode_events(spelled, "application/x-ndjson", None, now_ns=NOW)
    assert table.column("timestamp")[0].as_py() == 1_800_000_000 * 10**9
    assert table.slice(1).equals(decode_events(plain, "application/x-ndjson", None, now_ns=NOW).slice(1))
    fast = decode_events(plain, "application/x-ndjson", None, now_ns=NOW)
    monkeypatch.setattr(decode_module, "scan", lambda data, ndjson: None)
    assert decode_events(plain, "application/x-ndjson", None, now_ns=NOW).equals(fast)


def test_threads_scan_side_by_side() -> None:
    """Each thread has its own cursor: concurrent scans neither fail nor mix their rows."""
    bodies = [b"\n".join(line(timestamp=t, value=v) for v in range(2000)) for t in range(4)]
    results: dict[int, list[dict[str, Any]] | None] = {}

    def work(i: int) -> None:
        for _ in range(5):
            results[i] = scanned(bodies[i], ndjson=True)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert results[i] == oracle(bodies[i], ndjson=True)


def test_without_memfd_the_body_goes_through_a_temporary_file(monkeypatch: pytest.MonkeyPatch) -> None:
    body = b"\n".join(line(timestamp=i) for i in range(10))
    monkeypatch.delattr("os.memfd_create")
    assert scanned(body, ndjson=True) == oracle(body, ndjson=True)
