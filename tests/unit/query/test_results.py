"""Encoding SQL results: JSON exact to the last digit, files that pyarrow reads back unchanged."""

from __future__ import annotations

import base64
import io
import json
import math
from decimal import Decimal

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from query.results import FORMATS, MEDIA_TYPES, encode_batches, json_values, to_json, write_batches
from query.sandbox import Sandbox, SqlResult

I64 = (-(2**63), 2**63 - 1)


def _result(table: pa.Table, types: tuple[str, ...] | None = None) -> SqlResult:
    return SqlResult(table, types or tuple(str(t) for t in table.schema.types), False, 1.5, "q-1")


def _no_views(con: duckdb.DuckDBPyConnection) -> None:
    pass


def _all_types() -> tuple[pa.Table, tuple[str, ...]]:
    """Every DuckDB type with its edge values (min, max, NULL), as DuckDB hands them to Arrow."""
    con = duckdb.connect(config={"autoload_known_extensions": False})
    try:
        rel = con.sql("SELECT * FROM test_all_types()")
        return rel.to_arrow_table(), tuple(str(t) for t in rel.types)
    finally:
        con.close()


def test_json_shape() -> None:
    body = json.loads(to_json(_result(pa.table({"n": pa.array([1, 2], pa.int64())}), ("BIGINT",))))
    assert body == {
        "columns": [{"name": "n", "type": "BIGINT"}],
        "rows": [[1], [2]],
        "row_count": 2,
        "truncated": False,
        "took_ms": 1.5,
        "query_id": "q-1",
    }


def test_json_integers_stay_exact_integers() -> None:
    table = pa.table(
        {
            "i64": pa.array([I64[0], I64[1], None], pa.int64()),
            "u64": pa.array([0, 2**64 - 1, None], pa.uint64()),
            "huge": pa.array([Decimal(-(10**38) + 1), Decimal(10**38 - 1), None], pa.decimal128(38, 0)),
        }
    )
    raw = to_json(_result(table))
    assert b"9223372036854775807" in raw and b"18446744073709551615" in raw and b"e+" not in raw
    rows = json.loads(raw)["rows"]  # Python's json keeps big integers exact
    assert rows == [[I64[0], 0, -(10**38) + 1], [I64[1], 2**64 - 1, 10**38 - 1], [None, None, None]]
    assert all(type(v) is int for row in rows[:2] for v in row)


def test_json_decimals_are_exact_numbers() -> None:
    table = pa.table({"d": pa.array([Decimal("1.50"), Decimal("-0.000000001")], pa.decimal128(18, 9))})
    raw = to_json(_result(table))
    assert b"[1.500000000]" in raw and b"[-0.000000001]" in raw
    assert json.loads(raw, parse_float=Decimal)["rows"] == [[Decimal("1.5")], [Decimal("-0.000000001")]]


def test_json_non_finite_floats_are_null() -> None:
    table = pa.table({"f": pa.array([1.25, math.nan, math.inf, -math.inf, None])})
    assert json.loads(to_json(_result(table)))["rows"] == [[1.25], [None], [None], [None], [None]]


def test_json_times_are_iso_strings_with_nanoseconds() -> None:
    ns = 1_700_000_000_123_456_789
    table = pa.table(
        {
            "ts_ns": pa.array([ns], pa.timestamp("ns")),
            "ts_tz": pa.array([ns], pa.timestamp("ns", tz="UTC")),
            "ts_paris": pa.array([ns // 1000], pa.timestamp("us", tz="Europe/Paris")),
            "date": pa.array([19675], pa.date32()),
            "time": pa.array([3_723_000_000_001], pa.time64("ns")),
            "interval": pa.array([pa.MonthDayNano([1, 2, 3_500_000_000])], pa.month_day_nano_interval()),
            "dur": pa.array([90_000], pa.duration("ms")),
        }
    )
    (row,) = json.loads(to_json(_result(table)))["rows"]
    assert row == [
        "2023-11-14T22:13:20.123456789",
        "2023-11-14T22:13:20.123456789Z",
        "2023-11-14T23:13:20.123456+01:00",
        "2023-11-14",
        "01:02:03.000000001",
        "P1M2DT3.5S",
        "PT90S",
    ]


def test_json_binary_is_base64_and_nested_values_recurse() -> None:
    table = pa.table(
        {
            "blob": pa.array([b"\x00\xffab", None], pa.binary()),
            "list": pa.array([[1, None, 2**62], None], pa.list_(pa.int64())),
            "struct": pa.array([{"a": 1, "b": "x"}, None], pa.struct([("a", pa.int64()), ("b", pa.string())])),
            "map": pa.array([[("k", 1)], None], pa.map_(pa.string(), pa.int64())),
            "int_map": pa.array([[(7, "v")], []], pa.map_(pa.int64(), pa.string())),
            "enum": pa.array(["red", "blue"]).dictionary_encode(),
        }
    )
    rows = json.loads(to_json(_result(table)))["rows"]
    assert base64.b64decode(rows[0][0]) == b"\x00\xffab"
    assert rows[0][1:] == [[1, None, 2**62], {"a": 1, "b": "x"}, {"k": 1}, [[7, "v"]], "red"]
    assert rows[1] == [None, None, None, None, [], "blue"]


def test_json_of_sliced_nested_arrays_reads_the_slice() -> None:
    arr = pa.array([[1], [2, 3], [4, 5, 6], None, [7]], pa.list_(pa.int64())).slice(1, 3)
    assert json_values(arr) == [[2, 3], [4, 5, 6], None]
    structs = pa.array([{"a": i} for i in range(5)], pa.struct([("a", pa.int64())])).slice(2, 2)
    assert json_values(structs) == [{"a": 2}, {"a": 3}]


def test_every_duckdb_type_encodes_to_json_and_to_every_file_format() -> None:
    table, types = _all_types()
    body = json.loads(to_json(_result(table, types)))
    assert body["row_count"] == 3 and len(body["columns"]) == table.num_columns
    bigint = table.column_names.index("bigint")
    assert [r[bigint] for r in body["rows"]] == [I64[0], I64[1], None]
    for fmt in ("arrow", "csv", "parquet"):
        out = io.BytesIO()
        assert write_batches(fmt, table.schema, table.to_batches(), out) == 3
        back = _read(fmt, out.getvalue())
        assert back.num_rows == 3 and back.column_names == table.column_names


def _read(fmt: str, data: bytes) -> pa.Table:
    if fmt == "arrow":
        return pa.ipc.open_stream(data).read_all()
    if fmt == "parquet":
        return pq.read_table(io.BytesIO(data))
    # the CSV writer leaves NULL unquoted-empty and quotes an empty string
    return pacsv.read_csv(io.BytesIO(data), convert_options=_CSV_NULLS)


_CSV_NULLS = pacsv.ConvertOptions(strings_can_be_null=True, quoted_strings_can_be_null=False)


def _table(n: int) -> pa.Table:
    return pa.table(
        {
            "timestamp": pa.array([1_700_000_000_000_000_000 + i for i in range(n)], pa.int64()),
            "category": [f"cat-{i % 7}" for i in range(n)],
            "value": pa.array([(i * 7919) % 1000 - 500 for i in range(n)], pa.int64()),
            "producer_id": [None if i % 11 == 0 else f"p{i}" for i in range(n)],
        }
    )


@pytest.mark.parametrize("fmt", ["arrow", "csv", "parquet"])
def test_files_round_trip_through_pyarrow(fmt: str) -> None:
    table = _table(1000)
    out = io.BytesIO()
    assert write_batches(fmt, table.schema, table.to_batches(max_chunksize=128), out) == 1000
    assert _read(fmt, out.getvalue()).equals(table)


def test_parquet_gathers_small_batches_into_row_groups() -> None:
    table = _table(300_000)
    out = io.BytesIO()
    write_batches("parquet", table.schema, table.to_batches(max_chunksize=1000), out)
    meta = pq.ParquetFile(io.BytesIO(out.getvalue())).metadata
    assert meta.num_rows == 300_000 and meta.num_row_groups == 3


@pytest.mark.parametrize("fmt", ["arrow", "csv", "parquet"])
def test_encoded_chunks_concatenate_to_the_file(fmt: str) -> None:
    table = _table(50_000)
    whole = io.BytesIO()
    write_batches(fmt, table.schema, table.to_batches(max_chunksize=5000), whole)
    chunks = list(encode_batches(fmt, table.schema, table.to_batches(max_chunksize=5000), chunk_bytes=64 * 1024))
    assert len(chunks) > 1 or fmt == "parquet"  # parquet holds a row group back until it is full
    assert b"".join(chunks) == whole.getvalue()


def test_encode_batches_is_lazy() -> None:
    """An export streams: the first chunk is out before the last batch is produced."""
    table = _table(20_000)
    pulled = 0

    def batches() -> object:
        nonlocal pulled
        for b in table.to_batches(max_chunksize=1000):
            pulled += 1
            yield b

    chunks = encode_batches("csv", table.schema, batches(), chunk_bytes=1)  # type: ignore[arg-type]
    next(chunks)
    assert pulled < 20


def test_csv_writes_nested_and_binary_columns_as_text() -> None:
    table = pa.table(
        {
            "l": pa.array([[1, 2], None], pa.list_(pa.int64())),
            "b": pa.array([b"\x00", b"z"], pa.binary()),
            "i": pa.array([pa.MonthDayNano([0, 1, 0]), None], pa.month_day_nano_interval()),
        }
    )
    out = io.BytesIO()
    write_batches("csv", table.schema, table.to_batches(), out)
    back = pacsv.read_csv(io.BytesIO(out.getvalue()), convert_options=_CSV_NULLS).to_pylist()
    assert back == [{"l": "[1,2]", "b": "AA==", "i": "P1D"}, {"l": None, "b": "eg==", "i": None}]


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown file format"):
        write_batches("xlsx", pa.schema([]), [], io.BytesIO())
    assert set(MEDIA_TYPES) == set(FORMATS)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(*I64)),
            st.one_of(st.none(), st.text(max_size=20)),
            st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
        ),
        max_size=40,
    )
)
def test_any_rows_round_trip_through_json_and_files(rows: list[tuple[int | None, str | None, float | None]]) -> None:
    table = pa.table(
        {
            "i": pa.array([r[0] for r in rows], pa.int64()),
            "s": pa.array([r[1] for r in rows], pa.string()),
            "f": pa.array([r[2] for r in rows], pa.float64()),
        }
    )
    assert json.loads(to_json(_result(table)))["rows"] == [list(r) for r in rows]
    for fmt in ("arrow", "parquet"):
        out = io.BytesIO()
        write_batches(fmt, table.schema, table.to_batches(), out)
        assert _read(fmt, out.getvalue()).equals(table)


def test_a_sandbox_result_encodes_end_to_end() -> None:
    sql = (
        "SELECT 9223372036854775807::BIGINT AS big, 170141183460469231731687303715884105727::HUGEINT AS huge, "
        "'nan'::DOUBLE AS nan, NULL::VARCHAR AS nothing, make_timestamp_ns(1700000000123456789) AS ts, "
        "'\\x00\\xFF'::BLOB AS bin, [1, 2] AS l"
    )
    result = Sandbox().run(sql, _no_views)
    body = json.loads(to_json(result))
    assert [c["type"] for c in body["columns"]] == [
        "BIGINT",
        "HUGEINT",
        "DOUBLE",
        "VARCHAR",
        "TIMESTAMP_NS",
        "BLOB",
        "INTEGER[]",
    ]
    assert body["rows"] == [
        [
            2**63 - 1,
            2**127 - 1,
            None,
            None,
            "2023-11-14T22:13:20.123456789",
            base64.b64encode(b"\0\xff").decode(),
            [1, 2],
        ]
    ]
    assert body["query_id"] == result.query_id and body["truncated"] is False
