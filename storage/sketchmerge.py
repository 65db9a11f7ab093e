"""Merging sketch rows: queries merge the rows in range, a sketch writer the groups it sketched
in pieces (``storage.sketchfile``).

The stored forms are ``storage.sketch``'s: a group of at most ``kll_k`` values keeps its sorted
values (``value_deltas``) instead of a KLL, and a frequent-items sketch whose counters are exact
keeps its items in ``top_producers`` / ``top_counts`` instead of a blob. The functions here read
both forms of each and keep the guarantees stated in ``storage.sketch``: a merged row summarises
exactly the union of its inputs, within ``SketchConfig.max_bytes()``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import datasketches as ds
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from storage.errors import StorageError
from storage.sketch import (
    SKETCH_DECODE_ERRORS,
    SKETCH_KEYS,
    SKETCH_SCHEMA,
    SketchConfig,
    combined,
    sketch_table,
    value_deltas_column,
)

__all__ = [
    "frequent_error",
    "merge_frequent",
    "merge_frequent_rows",
    "merge_kll",
    "merge_sketch_tables",
    "stored_values",
]

_Ints = npt.NDArray[np.int64]


def stored_values(value_deltas: pa.Array | pa.ChunkedArray) -> _Ints:
    """The values a ``value_deltas`` column holds, row after row (each row's in ascending order;
    null rows hold none)."""
    column = combined(value_deltas)
    if len(column) == 0 or column.null_count == len(column):
        return np.empty(0, np.int64)
    deltas = pc.list_flatten(column).to_numpy().astype(np.int64)
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy().astype(np.int64)
    lengths = lengths[lengths > 0]
    sums = np.cumsum(deltas)
    # Each row's running sum, less the sums of the rows before it (modulo 2^64, like the deltas).
    before = np.concatenate([[0], sums[np.cumsum(lengths)[:-1] - 1]]).astype(np.int64)
    values: _Ints = sums - np.repeat(before, lengths)
    return values


def merge_kll(
    kll: pa.Array | pa.ChunkedArray, value_deltas: pa.Array | pa.ChunkedArray | None, k: int
) -> ds.kll_doubles_sketch:
    """One KLL sketch of size ``k`` holding the rows' ``kll`` sketches (nulls skipped) and the
    values of their ``value_deltas`` (when given). A row whose values are stored answers exactly
    as the KLL it replaces would. Raises one of ``SKETCH_DECODE_ERRORS`` on a blob that is not a
    sketch."""
    merged = ds.kll_doubles_sketch(k)
    for blob in combined(kll).to_pylist():
        if blob is not None:
            merged.merge(ds.kll_doubles_sketch.deserialize(blob))
    if value_deltas is not None:
        values = stored_values(value_deltas)
        if len(values):
            merged.update(values.astype(np.float64))
    return merged


def frequent_error(sketch: ds.frequent_strings_sketch) -> int:
    """The sketch's maximum error: no producer it does not track has more events than this."""
    # "" is never a producer_id (1..256 bytes), so it is never tracked and its upper bound is
    # the sketch's offset, which the Python binding does not expose otherwise.
    return int(sketch.get_upper_bound(""))


def merge_frequent(
    blobs: Sequence[bytes | None],
    errors: Sequence[int],
    lg_max_k: int,
    producers: Sequence[str] = (),
    counts: Sequence[int] = (),
) -> tuple[ds.frequent_strings_sketch, int]:
    """Merge frequent-items sketches with their stored ``frequent_error``s: serialized ones
    (``blobs``) and exact ones stored as items (a None blob; their items, flattened, in
    ``producers`` and ``counts``).

    Returns the merged sketch and ``lost``, the error of inputs that the sketch cannot express:
    what a sketch built from rows left out, and the state of one purged to no items, which
    serialization drops (apache/datasketches-cpp#527). Guarantees: for every producer,
    ``sketch.get_lower_bound(p) <= true count <= sketch.get_upper_bound(p) + lost``, and the
    merged maximum error is ``frequent_error(sketch) + lost``. Raises one of
    ``SKETCH_DECODE_ERRORS`` on a blob that is not a sketch.
    """
    merged = ds.frequent_strings_sketch(lg_max_k)
    lost = 0
    for blob, error in zip(blobs, errors, strict=True):
        if blob is None:
            lost += error  # an exact sketch (offset 0): all its error is what it left out
            continue
        part = ds.frequent_strings_sketch.deserialize(blob)
        # A sketch purged to no items keeps no counters, so each producer it saw had at most
        # its error; that error is what the blob dropped.
        lost += error - frequent_error(part)
        merged.merge(part)
    # Updating with an exact sketch's items is what merging it does.
    deque(map(merged.update, producers, counts), 0)
    return merged, lost


def merge_frequent_rows(rows: pa.Table, lg_max_k: int) -> tuple[ds.frequent_strings_sketch, int]:
    """``merge_frequent`` over sketch rows (columns ``frequent``, ``frequent_error`` and, when
    some are stored as items, ``top_producers`` and ``top_counts``)."""
    producers: list[str] = []
    counts: list[int] = []
    if "top_producers" in rows.column_names:
        producers = pc.list_flatten(combined(rows["top_producers"])).to_pylist()
        counts = pc.list_flatten(combined(rows["top_counts"])).to_pylist()
    errors = [int(e) for e in rows["frequent_error"].to_pylist()]
    return merge_frequent(rows["frequent"].to_pylist(), errors, lg_max_k, producers, counts)


def _items(sketch: ds.frequent_strings_sketch) -> tuple[list[str], list[int]]:
    """An exact sketch's items, most events first then by producer: deterministic lists."""
    items = sorted(sketch.get_frequent_items(ds.NO_FALSE_NEGATIVES, 0), key=lambda i: (-i[1], i[0]))
    return [i[0] for i in items], [int(i[1]) for i in items]


def _run_starts(table: pa.Table) -> _Ints:
    """Where each run of equal (category, shard, hour) starts in ``table``, sorted by those."""
    n = table.num_rows
    changed = np.zeros(max(n - 1, 0), np.bool_)
    for k in SKETCH_KEYS:
        column = combined(table[k])
        changed |= pc.not_equal(column.slice(1), column.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    starts: _Ints = np.concatenate(([0], np.flatnonzero(changed) + 1)).astype(np.int64)
    return starts


def merge_sketch_tables(tables: Sequence[pa.Table], config: SketchConfig = SketchConfig()) -> pa.Table:
    """Merge sketch tables into one row per (category, shard, hour), sorted by those keys.

    A key present once is passed through byte for byte; rows sharing a key are merged into
    sketches of ``config``'s sizes (a larger stored sketch is down-sampled), so the result
    summarises exactly the union of the inputs' rows and stays within ``config.max_bytes()``
    when the inputs were built with it. Rows that all store their values, at most
    ``config.kll_k`` of them together, merge into the values (deterministic); any others into
    a KLL (randomised compaction). A merged frequent-items sketch that did not purge keeps, like
    one built from rows, only its ``config.kept_producers()`` largest counters (the inputs'
    items would otherwise add up over every merge: 0.57 against 0.2 bytes per event on W20
    after merging five parts an hour), and its ``frequent_error`` becomes the next counter plus
    what the inputs left out; the bounds stay hard. Raises ``StorageError`` if a stored sketch
    cannot be read.
    """
    parts = [t.select(SKETCH_SCHEMA.names).cast(SKETCH_SCHEMA) for t in tables if t.num_rows]
    if not parts:
        return SKETCH_SCHEMA.empty_table()
    table = pa.concat_tables(parts).sort_by([(k, "ascending") for k in SKETCH_KEYS]).combine_chunks()
    firsts = _run_starts(table)
    if len(firsts) == table.num_rows:
        return table
    run_counts = np.diff(np.append(firsts, table.num_rows))
    at_firsts = table.select(list(SKETCH_KEYS)).take(pa.array(firsts))
    categories, shards, hours = (at_firsts[k].to_pylist() for k in SKETCH_KEYS)

    # Columns stay in Arrow and are read a group at a time: as Python objects, a compaction of
    # many parts' sketch rows took over a GB (the list columns most of it).
    n_col = table["n"].to_numpy()
    cpc_col, kll_col = table["cpc"].chunk(0), table["kll"].chunk(0)
    kll_null = kll_col.is_null().to_numpy(zero_copy_only=False)
    deltas = table["value_deltas"].combine_chunks()

    def values_of(rows: range) -> _Ints:
        # Decoded a group at a time: all rows' values at once (~160 a row on W20, several int64
        # temporaries each) took 1.6 GB for a 64-part merge.
        return stored_values(deltas.slice(rows.start, len(rows)))

    ns: list[int] = []
    cpcs: list[bytes] = []
    frequents: list[bytes | None] = []
    errors: list[int] = []
    klls: list[bytes | None] = []
    top_producers: list[list[str] | None] = []
    top_counts: list[list[int] | None] = []
    # Each merged row's sorted values when it keeps them, else None.
    kept_values: list[_Ints | None] = []
    runs = zip(categories, shards, hours, firsts.tolist(), run_counts.tolist(), strict=True)
    for category, shard, hour, first, count in runs:
        span = range(first, first + count)
        ns.append(int(n_col[first : first + count].sum()))
        if count == 1:
            row = table.slice(first, 1).to_pylist()[0]
            cpcs.append(row["cpc"])
            frequents.append(row["frequent"])
            top_producers.append(row["top_producers"])
            top_counts.append(row["top_counts"])
            errors.append(row["frequent_error"])
            klls.append(row["kll"])
            kept_values.append(values_of(span) if deltas[first].is_valid else None)
            continue
        try:
            union = ds.cpc_union(config.hll_lg_k)
            for blob in cpc_col.slice(first, count).to_pylist():
                union.update(ds.cpc_sketch.deserialize(blob))
            frequent, lost = merge_frequent_rows(table.slice(first, count), config.frequent_lg_max_k)
            if ns[-1] <= config.kll_k and bool(kll_null[first : first + count].all()):
                klls.append(None)
                kept_values.append(np.sort(values_of(span)))
            else:
                blobs = kll_col.slice(first, count)
                klls.append(merge_kll(blobs, deltas.slice(first, count), config.kll_k).serialize())
                kept_values.append(None)
        except SKETCH_DECODE_ERRORS as e:
            raise StorageError(
                f"sketch of category={category!r} shard={shard} hour={hour} cannot be read: {e}; "
                "rebuild it from the hour's events with build_sketches"
            ) from e
        cpcs.append(union.get_result().serialize())
        if frequent_error(frequent) == 0:  # no purge: the counters are exact lower bounds
            # Keep the largest, as building does: a producer let go had at most its counter plus
            # what the inputs left out (lost), and the next counter bounds those let go.
            producers, counts = _items(frequent)
            keep = config.kept_producers()
            frequents.append(None)
            top_producers.append(producers[:keep])
            top_counts.append(counts[:keep])
            errors.append((counts[keep] if len(counts) > keep else 0) + lost)
        else:
            frequents.append(frequent.serialize())
            top_producers.append(None)
            top_counts.append(None)
            errors.append(frequent_error(frequent) + lost)
    sizes = np.array([0 if v is None else len(v) for v in kept_values], np.int64)
    small = np.array([v is not None for v in kept_values])
    values = np.concatenate([np.empty(0, np.int64), *(v for v in kept_values if v is not None)])
    return sketch_table(
        categories,
        shards,
        hours,
        ns,
        cpcs,
        frequents,
        errors,
        klls,
        value_deltas_column(values, sizes, small),
        pa.array(top_producers, pa.list_(pa.string())),
        pa.array(top_counts, pa.list_(pa.int64())),
    )
