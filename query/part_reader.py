"""Reading a slice of rows out of a part's events file: a few row groups, not a scan.

Raw rows in a part are sorted by (category, timestamp), so the rows of one category in one
minute are a known row range of the file (the minute index gives it, see
``query/rollup_cache.py``). ``PartReader.columns`` returns those rows' columns by decoding only
the row groups that hold them; decoded row groups are kept in a small LRU cache (bounded in
bytes), since neighbouring queries often touch the same groups. Open files keep their parsed
footers (parts are immutable and their names never reused), least recently used first out once
over their own byte budget: a parsed footer is large, and the set of parts grows with the data.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from query.lru import ByteLRU

__all__ = ["PartReader", "ReaderConfig"]


@dataclass(frozen=True)
class ReaderConfig:
    # Decoded row groups kept for reuse. 8k-row groups decode in well under a millisecond: on
    # the W20 bench's queries, asked three times over, 8 MiB answered as fast as 32 MiB (10 %
    # more group reads) and the node's RSS was 37 MiB lower (issue 8).
    cache_bytes: int = 8 << 20
    # Open files with their parsed footers. A parsed footer is big: ~900 bytes per column chunk,
    # about 0.5 MB for an hour of W20 in 8k-row groups, so this bounds memory as data grows.
    file_bytes: int = 24 << 20


class _File:
    """One open file: its parsed footer, where each row group starts, and a reader (pyarrow
    readers are not safe to share between threads, hence the lock)."""

    def __init__(self, path: str) -> None:
        self.meta = pq.read_metadata(path)
        sizes = [self.meta.row_group(i).num_rows for i in range(self.meta.num_row_groups)]
        self.starts = np.concatenate(([0], np.cumsum(sizes, dtype=np.int64)))
        self.cost = 900 * self.meta.num_row_groups * self.meta.num_columns + 4096
        self.lock = threading.Lock()
        self.reader = pq.ParquetFile(path, metadata=self.meta)


class PartReader:
    """Thread-safe reader of row ranges from immutable Parquet files."""

    def __init__(self, config: ReaderConfig | None = None) -> None:
        self.config = config or ReaderConfig()
        self._lock = threading.Lock()
        self._files: ByteLRU[str, _File] = ByteLRU(self.config.file_bytes, lambda f: f.cost, keep=1)
        self._groups: ByteLRU[tuple[str, int, tuple[str, ...]], pa.Table] = ByteLRU(
            self.config.cache_bytes, lambda t: t.nbytes
        )
        self.group_reads = 0  # row groups decoded (cache misses), for tests and metrics

    def _file(self, path: str) -> _File:
        with self._lock:
            f = self._files.get(path)
        if f is not None:
            return f
        f = _File(path)
        with self._lock:
            return self._files.put(path, f)

    def footer(self, path: str) -> tuple[pq.FileMetaData, npt.NDArray[Any]]:
        """The file's metadata and the first row of each row group (plus the row count)."""
        f = self._file(path)
        return f.meta, f.starts

    def _groups_of(self, path: str, f: _File, groups: range, names: tuple[str, ...]) -> list[pa.Table]:
        """The row groups ``groups`` of the file: cached ones from the cache, the others in one
        read (a read costs a fixed ~0.1 ms besides the decoding)."""
        found: dict[int, pa.Table] = {}
        with self._lock:
            for g in groups:
                hit = self._groups.get((path, g, names))
                if hit is not None:
                    found[g] = hit
        missing = [g for g in groups if g not in found]
        if missing:
            with f.lock:  # small reads: the thread pool costs more than it saves
                table = f.reader.read_row_groups(missing, columns=list(names), use_threads=False)
            offset = 0
            with self._lock:
                self.group_reads += len(missing)
                for g in missing:
                    n = int(f.starts[g + 1] - f.starts[g])
                    found[g] = self._groups.put((path, g, names), table.slice(offset, n))
                    offset += n
        return [found[g] for g in groups]

    def columns(self, path: str, first: int, stop: int, names: list[str]) -> dict[str, pa.Array]:
        """Rows ``[first, stop)`` of the file, one array per column name."""
        f = self._file(path)
        starts = f.starts
        if not 0 <= first <= stop <= int(starts[-1]):
            raise IndexError(f"rows [{first}, {stop}) outside {path} ({int(starts[-1])} rows)")
        if first == stop:
            schema = f.meta.schema.to_arrow_schema()
            return {n: pa.array([], schema.field(n).type) for n in names}
        g0 = int(np.searchsorted(starts, first, side="right")) - 1
        g1 = int(np.searchsorted(starts, stop, side="left"))
        pieces = self._groups_of(path, f, range(g0, g1), tuple(names))
        table = (pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]).slice(
            first - int(starts[g0]), stop - first
        )
        return {n: table.column(n).combine_chunks() for n in names}

    def forget(self, paths: set[str]) -> None:
        """Drop what is cached of files that no longer exist (parts removed by compaction)."""
        with self._lock:
            self._files.pop_where(lambda p: p in paths)
            self._groups.pop_where(lambda k: k[0] in paths)
