"""Process memory: allocators set up to give memory back to the system.

A node's memory comes and goes in large blocks (a buffer generation of tens of MB is freed at
each persist), and both allocators under it keep freed memory for reuse by default: Arrow's
mimalloc pool holds its segments, and glibc's malloc raises its mmap threshold after large
frees and then serves big blocks from heaps it never shrinks. Resident memory then ratchets up
to the worst moment and stays there. ``tune_process_memory`` (once, at startup, before data
flows) makes Arrow allocate through the system allocator and pins glibc's mmap threshold, so
large blocks are unmapped when freed; ``release_memory`` (after a persist or a merge) hands
what is left free back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import cache

import pyarrow as pa

__all__ = ["release_memory", "tune_process_memory"]

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


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


def tune_process_memory(mmap_threshold: int = 256 << 10, arenas: int = 2) -> None:
    """Arrow through the system allocator (unless ``ARROW_DEFAULT_MEMORY_POOL`` says
    otherwise); glibc: blocks from ``mmap_threshold`` bytes up are mmapped and unmapped on
    free, at most ``arenas`` malloc arenas. Safe to call more than once."""
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        pa.set_memory_pool(pa.system_memory_pool())
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        libc.mallopt(_M_ARENA_MAX, arenas)


def release_memory() -> None:
    """Return freed memory to the system (Arrow's pool, then glibc's heaps)."""
    pa.default_memory_pool().release_unused()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
