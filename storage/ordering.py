"""Sort orders of stored rows and rollups, computed in numpy on integer keys.

Parts keep raw rows sorted by (category, timestamp): the rows of one category over any time
range are then one contiguous slice, which is what lets the query path read a ragged edge as a
few rows instead of scanning (see ``query/rollup_cache.py``). Strings are ordered by their UTF-8
bytes (which is also code point order, Python's ``str`` order and DuckDB's default collation),
through their rank among the distinct values, so a multi-column sort is one integer argsort.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from storage.schema import HOUR_NS

__all__ = ["EVENTS_SORTED_BY", "EVENTS_SORT_KEY", "lex_order", "radix_order", "string_ranks", "time_category_order"]

Ints = npt.NDArray[Any]

# Written into each events file's key-value metadata: readers that rely on the order check it.
EVENTS_SORT_KEY = b"tributary.sorted_by"
EVENTS_SORTED_BY = b"category,timestamp"


def string_ranks(values: pa.Array | pa.ChunkedArray) -> tuple[Ints, pa.Array]:
    """(rank of each value among the distinct values in byte order, the distinct values sorted)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64), values
    encoded = values.dictionary_encode()
    dictionary = encoded.dictionary
    by_bytes = pc.sort_indices(dictionary.cast(pa.binary())).to_numpy()
    rank_of_code = np.empty(len(dictionary), dtype=np.int64)
    rank_of_code[by_bytes] = np.arange(len(dictionary), dtype=np.int64)
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    return rank_of_code[codes], dictionary.take(pa.array(by_bytes))


def _bits(span: int) -> int:
    return max(int(span).bit_length(), 1)


def lex_order(*keys: Ints) -> Ints:
    """Stable argsort by ``keys[0]``, then ``keys[1]``, ... (non-negative integer keys).

    Packs the keys into one int64 when their ranges fit in 63 bits (the usual case: one argsort);
    falls back to ``np.lexsort`` otherwise.
    """
    n = len(keys[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    spans = [(int(k.min()), int(k.max())) for k in keys]
    widths = [_bits(hi - lo) for lo, hi in spans]
    if sum(widths) <= 63:
        packed = np.zeros(n, dtype=np.int64)
        for k, (lo, _), w in zip(keys, spans, widths, strict=True):
            packed <<= np.int64(w)
            packed |= k.astype(np.int64, copy=False) - np.int64(lo)
        return np.argsort(packed, kind="stable")
    return np.lexsort(tuple(k.astype(np.int64, copy=False) for k in reversed(keys)))


def radix_order(*keys: Ints) -> Ints:
    """Stable argsort by ``keys[0]``, then ``keys[1]``, ... (integer keys of any width, signed
    or not): a least-significant-digit radix sort, 16 bits a pass, each pass numpy's stable
    argsort of a ``uint16`` digit, which is a linear counting sort. A key spanning at most 2^16
    values costs one pass (~5 ms per 330k rows here), a 64-bit hash four.

    It replaced polars' sorts in the sketch build: about as fast for the keys that occur there,
    and a server that never imports polars is ~50 MiB smaller (its library, thread pool and
    allocator), which issue 8's memory target needs more than the few ms.
    """
    n = len(keys[0])
    order: Ints | None = None
    for key in reversed(keys):
        if n == 0:
            break
        lo = key.min()
        shifted = key - lo if key.dtype.kind == "u" else (key.astype(np.int64) - np.int64(lo)).view(np.uint64)
        bits = int(shifted.max()).bit_length()
        for shift in range(0, max(bits, 1), 16):
            part = shifted if order is None else shifted[order]
            digit = (part >> np.uint64(shift)).astype(np.uint16) if shift else part.astype(np.uint16)
            step = np.argsort(digit, kind="stable")
            order = step if order is None else order[step]
    return order if order is not None else np.arange(n, dtype=np.int64)


def _hour_runs(sorted_hours: Ints) -> list[tuple[int, int, int]]:
    starts = np.flatnonzero(np.diff(sorted_hours)) + 1
    firsts = np.concatenate(([0], starts))
    counts = np.diff(np.concatenate((firsts, [len(sorted_hours)])))
    return [(int(sorted_hours[f]) * HOUR_NS, int(f), int(c)) for f, c in zip(firsts, counts, strict=True)]


def time_category_order(rows: pa.Table, by_category: Ints | None = None) -> tuple[Ints, list[tuple[int, int, int]]]:
    """The order that sorts STORED_SCHEMA rows by (hour, category, timestamp), and the hours as
    ``(hour_ns, first, count)`` runs of that order.

    ``by_category``, when the caller has it, is the order by (category, timestamp) alone (the
    live buffer keeps one per run): a stable sort by hour then finishes the job in linear time
    instead of a full sort.
    """
    ts = rows.column("timestamp").to_numpy()
    if len(ts) == 0:
        return np.zeros(0, dtype=np.int64), []
    if by_category is not None:
        hours = ts[by_category] // HOUR_NS
        rel = hours - hours.min()
        # numpy's stable sort is a radix sort for 16-bit keys: linear, and it keeps the
        # (category, timestamp) order inside each hour.
        keys = rel.astype(np.uint16) if rel.max() < 1 << 16 else rel
        by_hour = np.argsort(keys, kind="stable")
        return by_category[by_hour], _hour_runs(hours[by_hour])
    hours = ts // HOUR_NS
    cats, _ = string_ranks(rows.column("category"))
    order = lex_order(hours, cats, ts - hours * HOUR_NS)  # ns within the hour: 42 bits at most
    return order, _hour_runs(hours[order])
