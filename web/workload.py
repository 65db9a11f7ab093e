"""The seeded workload behind ``tributary load``: Zipf-popular producers, skewed categories.

Draws whole Arrow batches with numpy (no per-event Python), so the generator is never the
bottleneck of what it measures. The same seed gives the same events.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from storage.schema import EVENT_SCHEMA

__all__ = ["Workload", "WorkloadConfig"]


@dataclass(frozen=True)
class WorkloadConfig:
    producers: int = 10_000
    categories: int = 20
    zipf_s: float = 1.1
    value_min: int = 1
    value_max: int = 1000
    seed: int = 42


class Workload:
    def __init__(self, config: WorkloadConfig | None = None) -> None:
        self.config = c = config or WorkloadConfig()
        self._rng = np.random.default_rng(c.seed)
        weights = 1.0 / np.arange(1, c.producers + 1, dtype=np.float64) ** c.zipf_s
        self._cdf = np.cumsum(weights / weights.sum())
        self._names = pa.array([f"p{i:07d}" for i in range(c.producers)], pa.string())
        self._cats = pa.array([f"cat{i:02d}" for i in range(c.categories)], pa.string())
        cw = 1.0 / np.arange(1, c.categories + 1, dtype=np.float64) ** 0.5
        self._cat_cdf = np.cumsum(cw / cw.sum())

    def batch(self, n: int, start_ns: int, end_ns: int) -> pa.Table:
        """``n`` events with timestamps drawn uniformly from ``[start_ns, end_ns)``, sorted."""
        c, rng = self.config, self._rng
        span = max(1, end_ns - start_ns)
        ts = np.sort(start_ns + rng.integers(0, span, size=n, dtype=np.int64))
        pidx = np.minimum(np.searchsorted(self._cdf, rng.random(n)), c.producers - 1)
        cidx = np.minimum(np.searchsorted(self._cat_cdf, rng.random(n)), c.categories - 1)
        values = rng.integers(c.value_min, c.value_max + 1, size=n, dtype=np.int64)
        return pa.Table.from_arrays(
            [
                pa.array(ts),
                self._cats.take(pa.array(cidx)),
                pa.array(values),
                self._names.take(pa.array(pidx)),
            ],
            schema=EVENT_SCHEMA,
        )

    def batches(self, total: int, batch: int, start_ns: int, end_ns: int) -> Iterator[pa.Table]:
        """``total`` events in time order over ``[start_ns, end_ns)``, ``batch`` at a time."""
        done = 0
        while done < total:
            n = min(batch, total - done)
            lo = start_ns + (end_ns - start_ns) * done // total
            hi = start_ns + (end_ns - start_ns) * (done + n) // total
            yield self.batch(n, lo, max(hi, lo + 1))
            done += n
