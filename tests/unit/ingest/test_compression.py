"""ingest.compression: Content-Encoding undone exactly, within the budget, or refused."""

from __future__ import annotations

import gzip

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from ingest.compression import content_coding, inflate
from ingest.errors import MalformedBody, PayloadTooLarge, UnsupportedMediaType


@pytest.mark.parametrize(
    ("header", "coding"),
    [(None, None), ("", None), ("identity", None), (" GZIP ", "gzip"), ("x-gzip", "gzip"), ("zstd", "zstd")],
)
def test_content_coding_names(header: str | None, coding: str | None) -> None:
    assert content_coding(header) == coding


@pytest.mark.parametrize("header", ["br", "deflate", "gzip, zstd"])
def test_other_codings_are_unsupported(header: str) -> None:
    with pytest.raises(UnsupportedMediaType):
        content_coding(header)


def _pack(coding: str, piece: bytes) -> bytes:
    return gzip.compress(piece) if coding == "gzip" else zstandard.ZstdCompressor().compress(piece)


@given(pieces=st.lists(st.binary(max_size=2000), min_size=1, max_size=4), coding=st.sampled_from(["gzip", "zstd"]))
def test_members_and_frames_back_to_back_are_one_body(pieces: list[bytes], coding: str) -> None:
    body = b"".join(_pack(coding, p) for p in pieces)
    assert bytes(inflate(body, coding, 1 << 20)) == b"".join(pieces)


@pytest.mark.parametrize("coding", ["gzip", "zstd"])
def test_truncated_or_corrupt_is_malformed(coding: str) -> None:
    body = _pack(coding, bytes(range(256)) * 64)
    with pytest.raises(MalformedBody):
        inflate(body[: len(body) // 2], coding, 1 << 20)
    with pytest.raises(MalformedBody):
        inflate(b"\x00" * 32, coding, 1 << 20)


@pytest.mark.parametrize("coding", ["gzip", "zstd", None])
def test_over_the_budget_is_too_large(coding: str | None) -> None:
    data = b"\x00" * 100_001
    with pytest.raises(PayloadTooLarge):
        inflate(data if coding is None else _pack(coding, data), coding, 100_000)
    assert len(inflate(data if coding is None else _pack(coding, data), coding, 100_001)) == 100_001
