"""Sort orders in numpy: checked against numpy's own lexsort on random keys."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from storage.ordering import lex_order, radix_order

_INT64 = hnp.from_dtype(np.dtype(np.int64))
_UINT64 = hnp.from_dtype(np.dtype(np.uint64))
_SMALL = st.integers(-3, 3).map(np.int64)


@st.composite
def _keys(draw: st.DrawFn) -> list[np.ndarray]:
    n = draw(st.integers(0, 300))
    columns = []
    for _ in range(draw(st.integers(1, 3))):
        dtype, elements = draw(st.sampled_from([(np.int64, _INT64), (np.uint64, _UINT64), (np.int64, _SMALL)]))
        columns.append(draw(hnp.arrays(dtype, n, elements=elements)))
    return columns


@settings(max_examples=200, deadline=None)
@given(_keys())
def test_radix_order_is_a_stable_lexicographic_sort(keys: list[np.ndarray]) -> None:
    """Any widths and signs, ties (kept in input order), int64 extremes, empty input."""
    want = np.lexsort(tuple(reversed(keys)))
    assert radix_order(*keys).tolist() == want.tolist()


def test_radix_order_of_int64_extremes() -> None:
    k = np.array([2**63 - 1, -(2**63), 0, -1, 5, -(2**63)], dtype=np.int64)
    assert radix_order(k).tolist() == [1, 5, 3, 2, 4, 0]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 2**40)), max_size=200))
def test_lex_order_agrees_with_radix_order(pairs: list[tuple[int, int]]) -> None:
    a = np.array([p[0] for p in pairs], dtype=np.int64)
    b = np.array([p[1] for p in pairs], dtype=np.int64)
    if not pairs:
        return
    assert lex_order(a, b).tolist() == radix_order(a, b).tolist()
