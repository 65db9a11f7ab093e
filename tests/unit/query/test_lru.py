"""ByteLRU: least recently used out first once over budget; the most recent ``keep`` stay."""

from __future__ import annotations

from query.lru import ByteLRU


def test_evicts_least_recently_used_first_within_budget() -> None:
    lru: ByteLRU[str, bytes] = ByteLRU(10, len)
    lru.put("a", b"1234")
    lru.put("b", b"1234")
    assert lru.get("a") == b"1234"  # a is now the most recent
    lru.put("c", b"1234")  # 12 > 10: b goes, not a
    assert "b" not in lru and "a" in lru and "c" in lru and lru.nbytes == 8
    assert lru.put("a", b"other") == b"1234", "a key already there keeps its entry"
    assert lru.get("b") is None


def test_keep_holds_an_entry_larger_than_the_budget() -> None:
    one: ByteLRU[str, bytes] = ByteLRU(3, len, keep=1)
    one.put("big", b"123456")
    assert "big" in one and one.nbytes == 6
    none: ByteLRU[str, bytes] = ByteLRU(3, len)
    none.put("big", b"123456")
    assert len(none) == 0 and none.nbytes == 0


def test_pop_where_removes_and_returns_what_it_picks() -> None:
    lru: ByteLRU[tuple[str, int], bytes] = ByteLRU(100, len)
    for i in range(6):
        lru.put(("p", i), b"x" * i)
    gone = lru.pop_where(lambda k: k[1] % 2 == 0)
    assert sorted(gone) == [b"", b"xx", b"xxxx"]
    assert len(lru) == 3 and lru.nbytes == 1 + 3 + 5
