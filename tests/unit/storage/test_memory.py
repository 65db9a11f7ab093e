"""Allocator tuning: Arrow through the system allocator, freed memory handed back."""

from __future__ import annotations

import pyarrow as pa
import pytest

from storage.memory import release_memory, tune_process_memory


def test_tuning_puts_arrow_on_the_system_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    before = pa.default_memory_pool()
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    try:
        tune_process_memory()
        tune_process_memory()  # idempotent
        assert pa.default_memory_pool().backend_name == "system"
        big = pa.array(range(1_000_000))
        assert pa.total_allocated_bytes() >= big.nbytes
        del big
        release_memory()
    finally:
        pa.set_memory_pool(before)


def test_an_explicit_arrow_pool_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    before = pa.default_memory_pool()
    monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", before.backend_name)
    try:
        tune_process_memory()
        assert pa.default_memory_pool().backend_name == before.backend_name
    finally:
        pa.set_memory_pool(before)
