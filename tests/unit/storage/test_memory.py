"""Allocator tuning: Arrow through the system allocator, freed memory handed back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def _run(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    root = Path(__file__).resolve().parents[3]  # the repository: a fresh process imports it from there
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=root)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_tuning_before_pyarrow_loads_puts_the_parquet_writer_on_the_system_allocator(tmp_path: Path) -> None:
    """The Parquet writer allocates from Arrow's C++ default pool, which pyarrow's
    ``set_memory_pool`` does not reach: only tuning before pyarrow loads keeps it off mimalloc
    (a fresh process, as ``tributary serve`` is)."""
    if "mimalloc" not in _run("import pyarrow as pa; print(pa.supported_memory_backends())"):
        pytest.skip("this pyarrow has no mimalloc")
    write = (
        "import pyarrow as pa, pyarrow.parquet as pq\n"
        f"pq.write_table(pa.table({{'a': range(200_000)}}), {str(tmp_path / 'x.parquet')!r})\n"
        "print(pa.mimalloc_memory_pool().max_memory())\n"
    )
    assert _run("from storage.memory import tune_process_memory\ntune_process_memory()\n" + write) == "0"
    late = "import pyarrow\nfrom storage.memory import tune_process_memory\ntune_process_memory()\n" + write
    assert int(_run(late)) > 0  # what the test above guards against: the pool chosen too late


def test_excluded_modules_are_not_found_and_optional_users_go_without() -> None:
    out = _run(
        "import sys\n"
        "from storage.memory import exclude_modules\n"
        "exclude_modules(('pandas', 'wave'))\n"
        "exclude_modules(('pandas',))\n"  # again: wave stays excluded
        "for name in ('wave', 'pandas', 'pandas.core'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ModuleNotFoundError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit(name + ' was imported')\n"
        "import duckdb, pyarrow as pa\n"
        "con = duckdb.connect()\n"
        "con.register('t', pa.table({'a': [1, 2]}))\n"  # imports pandas where it is installed and allowed
        "print(con.sql('SELECT sum(a) FROM t').fetchall()[0][0], 'pandas' in sys.modules, 'wave' in sys.modules)\n"
    )
    assert out == "3 False False"
