"""The Content-Encoding of an ingest body, undone within a byte budget.

``inflate`` stops within one step of the budget however small the compressed body is, so a
decompression bomb costs the node a bounded amount of memory and time: gzip is inflated in 1 MiB
steps, zstd is fed input in pieces sized so that no step can overshoot the budget by more than a
quarter, and a zstd frame declaring a size over the budget is refused before any work. Several gzip
members (RFC 1952 section 2.2) or zstd frames (RFC 8878 section 3.1) back to back are one body.
"""

from __future__ import annotations

import zlib

import zstandard

from ingest.errors import MalformedBody, PayloadTooLarge, UnsupportedMediaType

__all__ = ["content_coding", "inflate"]

_ENCODINGS = {"gzip": "gzip", "x-gzip": "gzip", "zstd": "zstd", "identity": None, "": None}
_OUT_CHUNK = 1 << 20
# One zstd block inflates to at most 128 KiB from as little as 4 bytes (an RLE block), so feeding
# `budget >> 17` input bytes per call can overshoot the budget by at most a quarter.
_ZSTD_WORST_RATIO_SHIFT = 17


def content_coding(content_encoding: str | None) -> str | None:
    """The coding named by a ``Content-Encoding`` header: ``"gzip"``, ``"zstd"`` or None for
    none/identity; ``UnsupportedMediaType`` for anything else."""
    key = (content_encoding or "").strip().lower()
    if key not in _ENCODINGS:
        raise UnsupportedMediaType(f"unsupported Content-Encoding {content_encoding!r}; use gzip or zstd")
    return _ENCODINGS[key]


def inflate(body: bytes, coding: str | None, limit: int) -> bytes | bytearray:
    """The decompressed body; stops as soon as the output passes ``limit`` (so a bomb is never
    inflated in full) and refuses truncated or corrupt input."""
    if coding is None:
        if len(body) > limit:
            raise PayloadTooLarge(f"body is {len(body)} bytes, over the limit of {limit}")
        return body
    out = bytearray()
    view = memoryview(body)
    too_large = PayloadTooLarge(f"decompressed body exceeds the limit of {limit} bytes")
    try:
        if coding == "gzip":
            # A gzip body may hold several members back to back (RFC 1952 section 2.2).
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            pending: bytes | memoryview = view
            while True:
                chunk = d.decompress(pending, _OUT_CHUNK)
                if len(out) + len(chunk) > limit:
                    raise too_large
                out += chunk
                if d.eof:
                    if not d.unused_data:
                        return out
                    pending, d = d.unused_data, zlib.decompressobj(16 + zlib.MAX_WBITS)
                elif d.unconsumed_tail or chunk:
                    pending = d.unconsumed_tail
                else:
                    raise MalformedBody("gzip body is truncated")
        if _declared_size(body) > limit:
            raise too_large  # the first frame declares its size: refuse before any work
        zd = zstandard.ZstdDecompressor().decompressobj()
        pos = 0
        while pos < len(view):
            step = max(64, (limit - len(out)) >> _ZSTD_WORST_RATIO_SHIFT)
            piece = view[pos : pos + step]
            pos += len(piece)
            chunk = zd.decompress(piece)
            if len(out) + len(chunk) > limit:
                raise too_large
            out += chunk
            if zd.eof:  # another frame may follow (RFC 8878 section 3.1)
                pos -= len(zd.unused_data)
                if pos >= len(view):
                    return out
                zd = zstandard.ZstdDecompressor().decompressobj()
        raise MalformedBody("zstd body is truncated")
    except (zlib.error, zstandard.ZstdError) as e:
        raise MalformedBody(f"corrupt {coding} body: {e}") from e


def _declared_size(body: bytes) -> int:
    try:
        return int(zstandard.frame_content_size(body))
    except zstandard.ZstdError:  # not a frame header (decoding will say so) or a skippable frame
        return -1
