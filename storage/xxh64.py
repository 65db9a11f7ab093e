"""xxHash64 of every string of an Arrow array at once, in numpy: no Python loop per string.

``xxh64_strings(array)`` equals ``[xxhash.xxh64_intdigest(s.encode()) for s in array]`` bit for
bit (the property test checks it against the ``xxhash`` package on random strings of every
length). It is what lets ingest compute ``shard = xxh64(producer_id) % shards`` for a batch of
100k rows in about a millisecond, with no per-producer cache to hold in memory.
``xxh64_int_pairs`` does the same for 16-byte (int64, int64) keys: the slice index's digests.

The algorithm is the reference one (github.com/Cyan4973/xxHash, ``XXH64``): 32-byte stripes
over four lanes, then 8-, 4- and 1-byte tails, then the avalanche. Strings of different lengths
run the same sequence of numpy steps; a step applies only to the strings long enough for it.
uint64 array arithmetic in numpy wraps modulo 2**64 silently, which is exactly what the
algorithm wants; scalar-with-scalar arithmetic would warn, so constants are folded in Python.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

__all__ = ["xxh64_int_pairs", "xxh64_strings"]

U64 = npt.NDArray[Any]  # uint64 arrays (numpy's stubs lose the dtype through shifts and ors)

_M = (1 << 64) - 1
P1 = 0x9E3779B185EBCA87
P2 = 0xC2B2AE3D27D4EB4F
P3 = 0x165667B19E3779F9
P4 = 0x85EBCA77C2B2AE63
P5 = 0x27D4EB2F165667C5

_P1, _P2, _P3, _P4, _P5 = (np.uint64(p) for p in (P1, P2, P3, P4, P5))
_PAD = 40


def _rotl(x: U64, r: int) -> U64:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def _round(acc: U64, lane: U64) -> U64:
    acc = acc + lane * _P2
    return _rotl(acc, 31) * _P1


def _merge(h: U64, v: U64) -> U64:
    h = h ^ _round(np.zeros_like(v), v)
    return h * _P1 + _P4


def _string_buffers(array: pa.Array | pa.ChunkedArray) -> tuple[U64, U64]:
    """(offsets as int64, data bytes) of a string array. The data is padded with zero bytes so
    that the reads of masked-out steps (up to 32 bytes past a string's end) stay inside it."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        array = array.cast(pa.large_string())
    if array.null_count:
        raise ValueError("xxh64_strings takes strings without nulls")
    _, off_buf, data_buf = array.buffers()
    off_type = np.int32 if pa.types.is_string(array.type) else np.int64
    offsets = np.frombuffer(off_buf, dtype=off_type, count=len(array) + 1, offset=array.offset * off_type().itemsize)
    offsets = offsets.astype(np.int64)
    lo, hi = (int(offsets[0]), int(offsets[-1])) if len(offsets) else (0, 0)
    data = np.zeros(hi - lo + _PAD, dtype=np.uint8)
    if data_buf is not None and hi > lo:
        data[: hi - lo] = np.frombuffer(data_buf, dtype=np.uint8, count=hi - lo, offset=lo)
    return offsets - lo, data


def _loader(data: U64) -> tuple[U64, U64]:
    """Views that read a little-endian uint64 / uint32 starting at ANY byte position."""
    n = len(data)
    words = np.ndarray(shape=(n - 7,), dtype="<u8", buffer=data, strides=(1,))
    halves = np.ndarray(shape=(n - 3,), dtype="<u4", buffer=data, strides=(1,))
    return words.astype(np.uint64, copy=False), halves


def xxh64_strings(array: pa.Array | pa.ChunkedArray, seed: int = 0) -> U64:
    """XXH64 of the UTF-8 bytes of each string, as uint64 (nulls are refused)."""
    offsets, data = _string_buffers(array)
    n = len(offsets) - 1
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    starts = offsets[:-1]
    lengths = offsets[1:] - starts
    words, halves = _loader(data)
    seed &= _M

    h = np.full(n, (seed + P5) & _M, dtype=np.uint64)
    pos = starts.copy()  # where each string's unread bytes begin
    stripes = lengths // 32
    if stripes.max() > 0:
        big = np.nonzero(stripes > 0)[0]
        lanes = [
            np.full(len(big), (seed + P1 + P2) & _M, dtype=np.uint64),
            np.full(len(big), (seed + P2) & _M, dtype=np.uint64),
            np.full(len(big), seed, dtype=np.uint64),
            np.full(len(big), (seed - P1) & _M, dtype=np.uint64),
        ]
        bpos = pos[big]
        bstripes = stripes[big]
        for s in range(int(bstripes.max())):
            live = np.nonzero(bstripes > s)[0]  # only strings that still have a whole stripe
            at = bpos[live] + 32 * s
            for i in range(4):
                lanes[i][live] = _round(lanes[i][live], words[at + 8 * i])
        v1, v2, v3, v4 = lanes
        hb = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        for v in lanes:
            hb = _merge(hb, v)
        h[big] = hb
        pos[big] = bpos + 32 * bstripes
    h = h + lengths.astype(np.uint64)

    rest = lengths % 32
    for j in range(3):  # up to three 8-byte words
        has = rest >= 8 * (j + 1)
        if not has.any():
            break
        k1 = _round(np.zeros(n, dtype=np.uint64), words[pos + 8 * j])
        upd = _rotl(h ^ k1, 27) * _P1 + _P4
        h = np.where(has, upd, h)
    pos = pos + (rest // 8) * 8
    rest = rest % 8
    has = rest >= 4
    if has.any():
        upd = _rotl(h ^ (halves[pos].astype(np.uint64) * _P1), 23) * _P2 + _P3
        h = np.where(has, upd, h)
        pos = pos + np.where(has, 4, 0)
        rest = rest - np.where(has, 4, 0)
    for j in range(3):  # up to three single bytes
        has = rest > j
        if not has.any():
            break
        upd = _rotl(h ^ (data[pos + j].astype(np.uint64) * _P5), 11) * _P1
        h = np.where(has, upd, h)

    return _avalanche(h)


def xxh64_int_pairs(first: int, second: npt.NDArray[np.int64]) -> U64:
    """XXH64 (seed 0) of the 16 bytes ``struct.pack("<qq", first, x)`` for each ``x`` of
    ``second``, as uint64: a 16-byte input is two 8-byte tail words, then the avalanche."""
    h = np.full(len(second), (P5 + 16) & _M, dtype=np.uint64)
    for word in (np.full(len(second), first & _M, dtype=np.uint64), second.astype(np.int64).view(np.uint64)):
        h = _rotl(h ^ _round(np.zeros_like(word), word), 27) * _P1 + _P4
    return _avalanche(h)


def _avalanche(h: U64) -> U64:
    h = h ^ (h >> np.uint64(33))
    h = h * _P2
    h = h ^ (h >> np.uint64(29))
    h = h * _P3
    out: U64 = h ^ (h >> np.uint64(32))
    return out
