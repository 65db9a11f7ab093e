"""ingest.decode: every refusal names the right class, row and field; every valid body in every
format and encoding decodes to the same table."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import tracemalloc
from dataclasses import dataclass
from typing import Any

import msgspec
import pyarrow as pa
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.decode import DecodeConfig, decode_events
from ingest.errors import BatchRejected, MalformedBody, PayloadTooLarge, UnsupportedMediaType
from storage.schema import EVENT_SCHEMA

NOW = 1_780_000_000_000_000_000  # 2026-05-28T20:26:40Z
DAY = 86_400 * 10**9
J, ND, AR = "application/json", "application/x-ndjson", "application/vnd.apache.arrow.stream"


def ev(i: int = 0, **over: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"timestamp": NOW - i, "category": "cpu", "value": i, "producer_id": f"p{i}"}
    e.update(over)
    return e


def json_body(events: list[Any]) -> bytes:
    return msgspec.json.encode(events)


def ndjson_body(events: list[Any]) -> bytes:
    return b"\n".join(msgspec.json.encode(e) for e in events) + b"\n"


def arrow_body(data: pa.Table | pa.RecordBatch | dict[str, Any], compression: str | None = None) -> bytes:
    table = data if isinstance(data, pa.Table | pa.RecordBatch) else pa.table(data)
    sink = io.BytesIO()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write(table)
    return sink.getvalue()


def with_bad(bad: Any, at: int = 2, n: int = 4) -> list[Any]:
    """A batch of n valid events with `bad` in place of event `at`."""
    events: list[Any] = [ev(i) for i in range(n)]
    events[at] = bad
    return events


def arrow_cols(n: int = 4, **over: Any) -> dict[str, Any]:
    cols: dict[str, Any] = {
        "timestamp": pa.array([NOW - i for i in range(n)], pa.int64()),
        "category": pa.array(["cpu"] * n),
        "value": pa.array(list(range(n)), pa.int64()),
        "producer_id": pa.array([f"p{i}" for i in range(n)]),
    }
    cols.update(over)
    return cols


def expected(events: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(
        [{k: e[k] for k in ("timestamp", "category", "value", "producer_id")} for e in events], schema=EVENT_SCHEMA
    )


def decode(body: bytes, ctype: str | None = J, enc: str | None = None, **cfg: Any) -> pa.Table:
    return decode_events(body, ctype, enc, now_ns=NOW, config=DecodeConfig(**cfg))


# ---------------------------------------------------------------- table of refusals


@dataclass
class Bad:
    id: str
    body: bytes
    ctype: str | None = J
    enc: str | None = None
    exc: type[BatchRejected] = BatchRejected
    row: int | None = None
    field: str | None = None
    cfg: dict[str, Any] | None = None
    detail: str = ""


VALID = json_body([ev(0), ev(1)])
VALID_ARROW = arrow_body(arrow_cols())
GZ_BOMB = gzip.compress(b"\0" * (4 << 20))
ZSTD_BOMB = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (4 << 20))
ZSTD_DECLARED = zstandard.ZstdCompressor().compress(b"\0" * (4 << 20))
ZSTD_VALID = zstandard.ZstdCompressor().compress(VALID)
GZ_VALID = gzip.compress(VALID)
SMALL = {"max_decompressed_bytes": 1 << 20}
BAD_UTF8 = pa.Array.from_buffers(
    pa.string(), 2, [None, pa.py_buffer(b"\0\0\0\0\1\0\0\0\3\0\0\0"), pa.py_buffer(b"a\xff\xfe")]
)
COMPRESSIBLE = arrow_cols(
    1 << 16,
    category=pa.array(["c" * 100] * (1 << 16)),
    timestamp=pa.array([NOW] * (1 << 16), pa.int64()),
)

CASES = [
    # Content-Type and Content-Encoding
    Bad("no-content-type", VALID, ctype=None, exc=UnsupportedMediaType),
    Bad("empty-content-type", VALID, ctype="", exc=UnsupportedMediaType),
    Bad("text-plain", VALID, ctype="text/plain", exc=UnsupportedMediaType),
    Bad("json-latin1", VALID, ctype="application/json; charset=latin-1", exc=UnsupportedMediaType),
    Bad("brotli", VALID, enc="br", exc=UnsupportedMediaType),
    Bad("stacked-codings", VALID, enc="gzip, zstd", exc=UnsupportedMediaType),
    # limits
    Bad("body-too-large", VALID, exc=PayloadTooLarge, cfg={"max_body_bytes": 10}),
    Bad("gzip-bomb", GZ_BOMB, enc="gzip", exc=PayloadTooLarge, cfg=SMALL),
    Bad("zstd-bomb-streamed", ZSTD_BOMB, enc="zstd", exc=PayloadTooLarge, cfg=SMALL),
    Bad("zstd-declared-size", ZSTD_DECLARED, enc="zstd", exc=PayloadTooLarge, cfg=SMALL),
    Bad("json-too-many-rows", json_body([ev(i) for i in range(5)]), exc=PayloadTooLarge, cfg={"max_rows": 4}),
    Bad("ndjson-too-many-rows", ndjson_body([ev(i) for i in range(5)]), ND, exc=PayloadTooLarge, cfg={"max_rows": 4}),
    Bad("arrow-too-many-rows", arrow_body(arrow_cols(5)), AR, exc=PayloadTooLarge, cfg={"max_rows": 4}),
    Bad("arrow-buffer-bomb", arrow_body(COMPRESSIBLE, "zstd"), AR, exc=PayloadTooLarge, cfg=SMALL),
    # bodies that do not parse
    Bad("json-syntax", b"[{", exc=MalformedBody),
    Bad("json-truncated", VALID[:-5], exc=MalformedBody),
    Bad("json-object", json_body(ev()), exc=MalformedBody),
    Bad("json-scalar", b"42", exc=MalformedBody),
    Bad("json-trailing", VALID + b" []", exc=MalformedBody),
    Bad("json-bad-utf8", VALID.replace(b'"cpu"', b'"c\xffu"', 1), exc=MalformedBody),
    Bad("json-lone-surrogate", VALID.replace(b'"cpu"', b'"\\ud800"', 1), exc=MalformedBody),
    Bad("json-raw-control-char", VALID.replace(b'"cpu"', b'"c\x00u"', 1), exc=MalformedBody),
    Bad("ndjson-bad-line", ndjson_body([ev(0)]) + b"{nope}\n", ND, exc=MalformedBody, detail="line 2"),
    Bad("ndjson-truncated", ndjson_body([ev(0), ev(1)])[:-8], ND, exc=MalformedBody),
    Bad("gzip-corrupt", b"\x1f\x8b" + b"garbage" * 5, enc="gzip", exc=MalformedBody),
    Bad("gzip-truncated", GZ_VALID[:-10], enc="gzip", exc=MalformedBody),
    Bad("gzip-not-gzip", VALID, enc="gzip", exc=MalformedBody),
    Bad("gzip-trailing-junk", GZ_VALID + b"junk", enc="gzip", exc=MalformedBody),
    Bad("zstd-corrupt", b"\x28\xb5\x2f\xfd" + b"garbage" * 5, enc="zstd", exc=MalformedBody),
    Bad("zstd-truncated", ZSTD_VALID[:-6], enc="zstd", exc=MalformedBody),
    Bad("zstd-empty", b"", enc="zstd", exc=MalformedBody),
    Bad("arrow-garbage", b"not an arrow stream at all", AR, exc=MalformedBody),
    Bad("arrow-truncated", VALID_ARROW[: len(VALID_ARROW) - 30], AR, exc=MalformedBody),
    Bad("arrow-empty-body", b"", AR, exc=MalformedBody),
    Bad(
        "arrow-bad-utf8",
        arrow_body(pa.table(arrow_cols(2, category=BAD_UTF8))),
        AR,
        exc=MalformedBody,
        row=1,
        field="category",
    ),
    # per-event problems, at row 2 of 4 unless said otherwise
    Bad("not-an-object", json_body(with_bad(7)), row=2),
    Bad("array-element", json_body(with_bad([1, 2], at=0)), row=0),
    Bad("ndjson-array-line", ndjson_body(with_bad([1], at=1)), ND, row=1),
    Bad(
        "missing-value",
        json_body(with_bad({"timestamp": NOW, "category": "c", "producer_id": "p"})),
        row=2,
        field="value",
    ),
    Bad(
        "missing-timestamp",
        json_body(with_bad({"category": "c", "value": 1, "producer_id": "p"})),
        row=2,
        field="timestamp",
    ),
    Bad("null-producer", json_body(with_bad(ev(producer_id=None))), row=2, field="producer_id"),
    Bad("value-bool", json_body(with_bad(ev(value=True))), row=2, field="value"),
    Bad("value-fraction", json_body(with_bad(ev(value=1.5))), row=2, field="value"),
    Bad("value-one-point-zero", json_body(with_bad(ev(value=1.0))), row=2, field="value"),
    Bad("value-exponent", VALID.replace(b'"value":1', b'"value":1e3'), row=1, field="value"),
    Bad("value-string", json_body(with_bad(ev(value="12"))), row=2, field="value"),
    Bad("value-over-int64", json_body(with_bad(ev(value=2**63))), row=2, field="value"),
    Bad("value-under-int64", json_body(with_bad(ev(value=-(2**63) - 1))), row=2, field="value"),
    Bad("value-huge", VALID.replace(b'"value":1', b'"value":123456789012345678901234567890'), row=1, field="value"),
    Bad("ts-float", json_body(with_bad(ev(timestamp=1.5e18))), row=2, field="timestamp"),
    Bad("ts-bool", json_body(with_bad(ev(timestamp=False))), row=2, field="timestamp"),
    Bad("ts-words", json_body(with_bad(ev(timestamp="yesterday"))), row=2, field="timestamp"),
    Bad("ts-no-offset", json_body(with_bad(ev(timestamp="2026-01-01T00:00:00"))), row=2, field="timestamp"),
    Bad("ts-leap-second", json_body(with_bad(ev(timestamp="2016-12-31T23:59:60Z"))), row=2, field="timestamp"),
    Bad("ts-feb-30", json_body(with_bad(ev(timestamp="2026-02-30T00:00:00Z"))), row=2, field="timestamp"),
    Bad("ts-10-digits", json_body(with_bad(ev(timestamp="2026-01-01T00:00:00.1234567891Z"))), row=2, field="timestamp"),
    Bad("ts-bad-offset", json_body(with_bad(ev(timestamp="2026-01-01T00:00:00+24:00"))), row=2, field="timestamp"),
    Bad("ts-negative", json_body(with_bad(ev(timestamp=-1))), row=2, field="timestamp"),
    Bad("ts-before-1970", json_body(with_bad(ev(timestamp="1969-12-31T23:59:59Z"))), row=2, field="timestamp"),
    Bad("ts-future", json_body(with_bad(ev(timestamp=NOW + DAY + 1))), row=2, field="timestamp"),
    Bad(
        "ts-past-retention",
        json_body(with_bad(ev(timestamp=NOW - 2 * DAY))),
        row=2,
        field="timestamp",
        cfg={"retention_ns": DAY},
    ),
    Bad("ts-over-int64", json_body(with_bad(ev(timestamp=2**63))), row=2, field="timestamp"),
    Bad("category-empty", json_body(with_bad(ev(category=""))), row=2, field="category"),
    Bad("category-129-bytes", json_body(with_bad(ev(category="é" * 64 + "x"))), row=2, field="category"),
    Bad("category-number", json_body(with_bad(ev(category=5))), row=2, field="category"),
    Bad("category-nul", json_body(with_bad(ev(category="a\0b"))), row=2, field="category"),
    Bad("producer-257-bytes", json_body(with_bad(ev(producer_id="p" * 257))), row=2, field="producer_id"),
    Bad("producer-list", json_body(with_bad(ev(producer_id=["p"]))), row=2, field="producer_id"),
    Bad("ndjson-null-value", ndjson_body(with_bad(ev(value=None), at=3)), ND, row=3, field="value"),
    # the first bad row wins, whichever check finds it
    Bad("first-of-two-kinds", json_body([ev(0), ev(1, category=""), ev(2, value=1.5)]), row=1, field="category"),
    Bad("first-of-two-fields", json_body([ev(0), ev(1, category="", value="x")]), row=1, field="category"),
    Bad("window-then-type", json_body([ev(0, timestamp=-5), ev(1, value=True)]), row=0, field="timestamp"),
    # empty batches
    Bad("json-empty", b"[]", detail="empty batch"),
    Bad("ndjson-empty", b"", ND, detail="empty batch"),
    Bad("ndjson-blank-lines", b"\n\n  \n", ND, detail="empty batch"),
    Bad(
        "arrow-zero-rows",
        arrow_body(arrow_cols(0, category=pa.array([], pa.string()), producer_id=pa.array([], pa.string()))),
        AR,
        detail="empty batch",
    ),
    # Arrow schemas and columns
    Bad("arrow-missing-column", arrow_body({k: v for k, v in arrow_cols().items() if k != "value"}), AR, field="value"),
    Bad("arrow-ts-as-string", arrow_body(arrow_cols(timestamp=pa.array(["1"] * 4))), AR, field="timestamp"),
    Bad("arrow-ts-as-int32", arrow_body(arrow_cols(timestamp=pa.array([1] * 4, pa.int32()))), AR, field="timestamp"),
    Bad("arrow-value-float", arrow_body(arrow_cols(value=pa.array([1.0] * 4))), AR, field="value"),
    Bad("arrow-category-int", arrow_body(arrow_cols(category=pa.array([1] * 4))), AR, field="category"),
    Bad(
        "arrow-duplicate-column",
        arrow_body(
            pa.Table.from_arrays([*arrow_cols().values(), pa.array(["x"] * 4)], names=[*arrow_cols(), "category"])
        ),
        AR,
        field="category",
    ),
    Bad(
        "arrow-null-value",
        arrow_body(arrow_cols(value=pa.array([1, 2, None, 4], pa.int64()))),
        AR,
        row=2,
        field="value",
    ),
    Bad(
        "arrow-null-ts",
        arrow_body(arrow_cols(timestamp=pa.array([NOW, None, NOW, NOW], pa.int64()))),
        AR,
        row=1,
        field="timestamp",
    ),
    Bad(
        "arrow-uint64-over",
        arrow_body(arrow_cols(value=pa.array([1, 2**63, 3, 4], pa.uint64()))),
        AR,
        row=1,
        field="value",
    ),
    Bad(
        "arrow-ts-seconds-future",
        arrow_body(
            arrow_cols(
                timestamp=pa.array([NOW // 10**9, NOW // 10**9, NOW // 10**9 + 2 * 86_400, 0], pa.timestamp("s"))
            )
        ),
        AR,
        row=2,
        field="timestamp",
    ),
    Bad(
        "arrow-category-long",
        arrow_body(arrow_cols(category=pa.array(["a", "b", "c", "x" * 129]))),
        AR,
        row=3,
        field="category",
    ),
    Bad(
        "arrow-producer-empty",
        arrow_body(arrow_cols(producer_id=pa.array(["a", "", "c", "d"]))),
        AR,
        row=1,
        field="producer_id",
    ),
    Bad(
        "arrow-producer-nul",
        arrow_body(arrow_cols(producer_id=pa.array(["a", "b", "c\0", "d"]))),
        AR,
        row=2,
        field="producer_id",
    ),
    Bad(
        "arrow-dictionary-null",
        arrow_body(arrow_cols(category=pa.array(["a", None, "a", "b"]).dictionary_encode())),
        AR,
        row=1,
        field="category",
    ),
    Bad(
        "arrow-first-row-across-fields",
        arrow_body(arrow_cols(producer_id=pa.array(["a", "b", "", "d"]), category=pa.array(["a", "b", "c", ""]))),
        AR,
        row=2,
        field="producer_id",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refusals(case: Bad) -> None:
    with pytest.raises(BatchRejected) as info:
        decode(case.body, case.ctype, case.enc, **(case.cfg or {}))
    err = info.value
    assert type(err) is case.exc, err.detail
    assert (err.row, err.field) == (case.row, case.field), err.detail
    assert case.detail in err.detail
    assert err.detail and str(err) == err.detail


def test_table_covers_enough_cases() -> None:
    assert len(CASES) >= 35
    assert {c.exc for c in CASES} == {BatchRejected, MalformedBody, PayloadTooLarge, UnsupportedMediaType}


@pytest.mark.parametrize("enc", ["gzip", "zstd"])
def test_bomb_is_never_inflated_in_full(enc: str) -> None:
    zeros = b"\0" * (64 << 20)
    bomb = (
        gzip.compress(zeros, 1) if enc == "gzip" else zstandard.ZstdCompressor(write_content_size=False).compress(zeros)
    )
    del zeros
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge):
            decode(bomb, J, enc, max_decompressed_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


# ---------------------------------------------------------------- valid bodies


EVENTS = [ev(i, category=["cpu", "mém", "disk"][i % 3], value=(-1) ** i * i * 10**15) for i in range(50)]


def encode(events: list[dict[str, Any]], fmt: str) -> tuple[bytes, str]:
    if fmt == "json":
        return json_body(events), J
    if fmt == "ndjson":
        return ndjson_body(events), ND
    return arrow_body(expected(events)), AR


@pytest.mark.parametrize("enc", [None, "identity", "gzip", "zstd"])
@pytest.mark.parametrize("fmt", ["json", "ndjson", "arrow"])
def test_round_trip(fmt: str, enc: str | None) -> None:
    body, ctype = encode(EVENTS, fmt)
    if enc == "gzip":
        body = gzip.compress(body)
    elif enc == "zstd":
        body = zstandard.ZstdCompressor().compress(body)
    table = decode(body, ctype, enc)
    assert table.schema == EVENT_SCHEMA
    assert table.equals(expected(EVENTS))


@pytest.mark.parametrize(
    ("body", "ctype", "enc"),
    [
        (gzip.compress(json_body(EVENTS)), "Application/JSON; charset=UTF-8", "GZIP"),
        (ndjson_body(EVENTS), "application/ndjson", None),
        (b"\r\n\r\n" + ndjson_body(EVENTS).replace(b"\n", b"\r\n\n"), ND, None),  # blank lines, CRLF
        (b"\xef\xbb\xbf" + json_body(EVENTS), J, None),  # byte order mark
        (json_body([dict(e, extra={"nested": [1, None]}, more=1.5) for e in EVENTS]), J, None),  # extra fields
        (gzip.compress(json_body(EVENTS)[:100]) + gzip.compress(json_body(EVENTS)[100:]), J, "x-gzip"),  # 2 members
        (
            b"".join(zstandard.ZstdCompressor().compress(p) for p in (json_body(EVENTS)[:99], json_body(EVENTS)[99:])),
            J,
            "zstd",
        ),
    ],
    ids=["params-case", "ndjson-alias", "crlf-blank-lines", "bom", "extra-fields", "gzip-members", "zstd-frames"],
)
def test_accepted_variants(body: bytes, ctype: str, enc: str | None) -> None:
    assert decode(body, ctype, enc).equals(expected(EVENTS))


def test_arrow_compatible_types() -> None:
    want = expected(EVENTS)
    cols = {n: want.column(n) for n in want.column_names}
    variants = [
        dict(
            cols,
            category=cols["category"].cast(pa.large_string()),
            producer_id=cols["producer_id"].cast(pa.string_view()),
        ),
        dict(cols, category=cols["category"].dictionary_encode()),
        dict(cols, timestamp=cols["timestamp"].cast(pa.timestamp("ns", tz="Europe/Paris"))),
        dict(cols, value=pa.array([abs(v) % 2**31 for v in cols["value"].to_pylist()], pa.uint32())),
        dict(cols, extra=pa.array([1.5] * len(EVENTS))),
    ]
    for variant in variants:
        table = decode(arrow_body(pa.table(variant)), AR)
        assert table.schema == EVENT_SCHEMA
        want_values = variant["value"].cast(pa.int64())
        assert table.equals(want.set_column(2, "value", want_values).cast(EVENT_SCHEMA)), variant.keys()


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_arrow_timestamp_units_convert_exactly(unit: str) -> None:
    per = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[unit]
    raw = [NOW // per, NOW // per - 1, 0]
    table = decode(arrow_body(arrow_cols(3, timestamp=pa.array(raw, pa.timestamp(unit)))), AR)
    assert table.column("timestamp").to_pylist() == [v * per for v in raw]


def test_arrow_multiple_batches_compressed_ipc() -> None:
    want = expected(EVENTS)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, want.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        for batch in want.to_batches(max_chunksize=7):
            writer.write_batch(batch)
    assert decode(sink.getvalue(), AR).equals(want)


def test_arrow_zero_copy() -> None:
    big = arrow_cols(10_000)
    body = arrow_body(big)
    table = decode(body, AR)
    # The int64 columns still point into the request body: nothing was copied.
    base = pa.py_buffer(body).address
    ts_buf = table.column("timestamp").chunk(0).buffers()[1]
    assert base <= ts_buf.address < base + len(body)


# ---------------------------------------------------------------- RFC 3339 in a batch (the parser: test_timestamp.py)


def test_rfc3339_timestamps_in_a_batch_mix_with_integers() -> None:
    events = [
        ev(0, timestamp="2026-05-28T20:26:39.999999999+00:00"),
        ev(1),
        ev(2, timestamp="2026-05-28T22:26:40+02:00"),
    ]
    table = decode(json_body(events), J)
    assert table.column("timestamp").to_pylist() == [NOW - 1, NOW - 1, NOW]


# ---------------------------------------------------------------- properties

_text_chars = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))


def _text(max_bytes: int) -> st.SearchStrategy[str]:
    return st.text(_text_chars, min_size=1, max_size=40).filter(lambda s: len(s.encode()) <= max_bytes)


valid_events = st.lists(
    st.fixed_dictionaries(
        {
            "timestamp": st.integers(0, NOW + DAY),
            "category": _text(128),
            "value": st.integers(-(2**63), 2**63 - 1),
            "producer_id": _text(256),
        }
    ),
    min_size=1,
    max_size=30,
)


def rfc3339(ns: int, offset_min: int) -> str:
    secs, frac = divmod(ns, 10**9)
    tz = dt.timezone(dt.timedelta(minutes=offset_min))
    local = dt.datetime.fromtimestamp(secs, tz)
    sign = "-" if offset_min < 0 else "+"
    hh, mm = divmod(abs(offset_min), 60)
    return local.strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}{sign}{hh:02d}:{mm:02d}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=valid_events, as_text=st.lists(st.booleans()), offset=st.integers(-23 * 60 - 59, 23 * 60 + 59))
def test_all_formats_decode_to_the_same_table(events: list[dict[str, Any]], as_text: list[bool], offset: int) -> None:
    want = expected(events)
    # JSON may spell some timestamps as RFC 3339 text; they must convert to the same ns.
    spelled = [
        dict(e, timestamp=rfc3339(e["timestamp"], offset)) if t else e for e, t in zip(events, as_text, strict=False)
    ]
    spelled += events[len(spelled) :]
    for body, ctype in [(json_body(spelled), J), (ndjson_body(spelled), ND), (arrow_body(want), AR)]:
        assert decode(body, ctype).equals(want)


# Each corruption makes one event invalid in a way the Arrow path can also express.
CORRUPTIONS = {
    "category-empty": lambda e: dict(e, category=""),
    "category-long": lambda e: dict(e, category="x" * 129),
    "producer-nul": lambda e: dict(e, producer_id="p\0"),
    "ts-future": lambda e: dict(e, timestamp=NOW + DAY + 1),
    "ts-old": lambda e: dict(e, timestamp=NOW - 3 * DAY),
}
JSON_ONLY = {
    "value-float": lambda e: dict(e, value=0.5),
    "value-bool": lambda e: dict(e, value=True),
    "ts-bad-text": lambda e: dict(e, timestamp="2026-13-01T00:00:00Z"),
    "missing": lambda e: {k: v for k, v in e.items() if k != "value"},
}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=valid_events, data=st.data())
def test_first_bad_row_is_reported(events: list[dict[str, Any]], data: st.DataObject) -> None:
    events = [dict(e, timestamp=max(e["timestamp"], NOW - DAY)) for e in events]
    kinds = st.sampled_from([None, None, None, *CORRUPTIONS, *JSON_ONLY])
    plan = data.draw(st.lists(kinds, min_size=len(events), max_size=len(events)))
    batch = [e if k is None else {**CORRUPTIONS, **JSON_ONLY}[k](e) for e, k in zip(events, plan, strict=True)]
    first = next((i for i, k in enumerate(plan) if k is not None), None)
    cfg = {"retention_ns": 2 * DAY}
    if first is None:
        assert decode(json_body(batch), J, **cfg).num_rows == len(batch)
        return
    for body, ctype in [(json_body(batch), J), (ndjson_body(batch), ND)]:
        with pytest.raises(BatchRejected) as info:
            decode(body, ctype, **cfg)
        assert type(info.value) is BatchRejected and info.value.row == first
    arrow_plan = [k if k in CORRUPTIONS else None for k in plan]
    arrow_first = next((i for i, k in enumerate(arrow_plan) if k is not None), None)
    arrow_batch = [e if k is None else CORRUPTIONS[k](e) for e, k in zip(events, arrow_plan, strict=True)]
    body = arrow_body(expected(arrow_batch))
    if arrow_first is None:
        assert decode(body, AR, **cfg).num_rows == len(batch)
    else:
        with pytest.raises(BatchRejected) as info:
            decode(body, AR, **cfg)
        assert info.value.row == arrow_first


def _mangle(body: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(body[: max(0, len(body) - cut)])
    for pos, byte in flips:
        if out:
            out[pos % len(out)] = byte
    return bytes(out)


SEEDS = {
    (J, None): json_body(EVENTS[:5]),
    (ND, None): ndjson_body(EVENTS[:5]),
    (AR, None): arrow_body(expected(EVENTS[:5])),
    (AR, "zstd"): zstandard.ZstdCompressor().compress(arrow_body(expected(EVENTS[:5]), "lz4")),
    (J, "gzip"): gzip.compress(json_body(EVENTS[:5])),
    (ND, "zstd"): zstandard.ZstdCompressor().compress(ndjson_body(EVENTS[:5])),
}


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(sorted(SEEDS, key=str)),
    raw=st.none() | st.binary(max_size=200),
    cut=st.integers(0, 40),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
)
def test_any_bytes_only_ever_raise_batch_rejected(
    kind: tuple[str, str | None], raw: bytes | None, cut: int, flips: list[tuple[int, int]]
) -> None:
    ctype, enc = kind
    body = raw if raw is not None else _mangle(SEEDS[kind], cut, flips)
    try:
        table = decode(body, ctype, enc)
    except BatchRejected as e:
        assert e.detail
    else:
        assert_obeys_rules(table)


def assert_obeys_rules(table: pa.Table) -> None:
    """What every table decode_events returns must satisfy, checked row by row in Python."""
    assert table.schema == EVENT_SCHEMA and table.num_rows > 0
    table.validate(full=True)
    for row in table.to_pylist():
        assert 0 <= row["timestamp"] <= NOW + DAY
        assert 1 <= len(row["category"].encode()) <= 128 and "\0" not in row["category"]
        assert 1 <= len(row["producer_id"].encode()) <= 256 and "\0" not in row["producer_id"]
