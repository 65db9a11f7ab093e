"""The benchmark: workload W20, Tributary through HTTP, and its peers (DuckDB, chdb) side by side.

Run with ``uv run python -m bench.run``; figures land in ``bench/RESULTS.md`` (issues 2 and 8).
"""
