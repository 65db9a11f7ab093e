"""Process memory: allocators set up to give memory back to the system.

A node's memory comes and goes in large blocks (a buffer generation of tens of MB is freed at
each persist), and both allocators under it keep freed memory for reuse by default: Arrow's
mimalloc pool holds its segments, and glibc's malloc raises its mmap threshold after large
frees and then serves big blocks from heaps it never shrinks. Resident memory then ratchets up
to the worst moment and stays there. ``tune_process_memory`` (once, at startup, before pyarrow
is imported) makes Arrow allocate through the system allocator and pins glibc's mmap threshold,
so large blocks are unmapped when freed; ``release_memory`` (after a persist or a merge) hands
what is left free back to the system. ``exclude_modules`` keeps libraries the server never uses
from being imported as a side effect of another one (DuckDB imports pandas, when it is
installed, the first time an Arrow table is registered: ~30 MiB that a production install,
without pandas, never has).

This module imports pyarrow only when a function runs, so that importing it does not load Arrow
before ``tune_process_memory`` has chosen its allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Iterable, Sequence
from functools import cache
from types import ModuleType

__all__ = ["exclude_modules", "release_memory", "tune_process_memory"]

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"


@cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim"):
            return libc
    except OSError:
        pass
    return None  # not glibc (musl, macOS): nothing to tune


def tune_process_memory(mmap_threshold: int = 32 << 20, arenas: int = 2) -> None:
    """Arrow through the system allocator (unless ``ARROW_DEFAULT_MEMORY_POOL`` says
    otherwise); glibc: blocks from ``mmap_threshold`` bytes up are mmapped and unmapped on
    free, at most ``arenas`` malloc arenas. Safe to call more than once.

    The threshold is 32 MiB (glibc's largest): a buffer generation's and a merge window's big
    arrays are mapped and unmapped, while the sort, encode and decode buffers of a few hundred KB
    reuse the heap (``release_memory`` trims it after a persist or a merge). At 256 KiB those were
    mapped and faulted in anew every time: ingest on the 4M bench fell from 0.79-0.85 to 0.63-0.66M
    events/s (Arrow) for 28 MiB less peak RSS (issue 8).

    Call it before anything imports pyarrow: Arrow's C++ library reads its default pool from
    ``ARROW_DEFAULT_MEMORY_POOL`` once, when it loads, and the Parquet writer and reader allocate
    from that pool whatever pyarrow's ``set_memory_pool`` says (which reaches only allocations
    made through pyarrow's Python API). Called later, the Parquet buffers stay in mimalloc,
    which kept ~50 MiB of a loading node's memory that it never gave back (issue 8)."""
    if "pyarrow" not in sys.modules:
        os.environ.setdefault(_POOL_VARIABLE, "system")
    import pyarrow as pa

    if os.environ.get(_POOL_VARIABLE, "system") == "system":
        pa.set_memory_pool(pa.system_memory_pool())
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        libc.mallopt(_M_ARENA_MAX, arenas)


def release_memory() -> None:
    """Return freed memory to the system (Arrow's pool, then glibc's heaps)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


class _Excluded(importlib.abc.MetaPathFinder):
    """Answers "no such module" for the excluded top-level packages, as if not installed."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (excluded from this process)", name=fullname)
        return None  # not ours: the other finders decide


def exclude_modules(names: Iterable[str] = ("pandas",)) -> None:
    """From now on, importing any of ``names`` (top-level packages) fails with
    ``ModuleNotFoundError`` in this process, exactly as if they were not installed; libraries
    that use them optionally (pyarrow, DuckDB, polars) then go without. Modules already imported
    stay. Safe to call more than once."""
    finder = next((f for f in sys.meta_path if isinstance(f, _Excluded)), None)
    wanted = frozenset(names) | (finder.names if finder is not None else frozenset())
    if finder is not None:
        sys.meta_path.remove(finder)
    sys.meta_path.insert(0, _Excluded(wanted))
