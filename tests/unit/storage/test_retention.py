"""Retention drops whole expired hours, exactly those, in one commit; readers keep their files."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.manifest import Manifest
from storage.partition import PartitionStore, hour_folder
from storage.retention import Retention, RetentionConfig
from storage.schema import HOUR_NS, MINUTE_NS
from tests.eventgen import T0, random_events, stored

HOURS = 5


def _store(root: Path, n: int = 600) -> tuple[Manifest, PartitionStore]:
    manifest = Manifest(root)
    store = PartitionStore(root, manifest)
    rows = stored(random_events(random.Random(7), n, start=T0, span=HOURS * HOUR_NS))
    manifest.commit(add=store.write(rows))
    return manifest, store


def _hours(manifest: Manifest) -> set[int]:
    return {p.hour for p in manifest.state.parts}


def test_off_by_default_keeps_everything(tmp_path: Path) -> None:
    manifest, store = _store(tmp_path)
    r = Retention(tmp_path, manifest)
    assert r.cutoff(T0 + 100 * HOUR_NS) is None
    assert r.run_once(T0 + 100 * HOUR_NS).parts == 0
    assert r.maybe_run() is None
    assert len(_hours(manifest)) == HOURS
    store.close()


def test_an_hour_goes_only_once_all_of_it_is_past_the_age(tmp_path: Path) -> None:
    manifest, store = _store(tmp_path)
    age = 2 * HOUR_NS
    r = Retention(tmp_path, manifest, RetentionConfig(max_age_ns=age))
    # The first hour [T0, T0+1h) ends at T0+1h: not yet expired 1 ns before now - age reaches it.
    assert r.run_once(T0 + HOUR_NS + age - 1).hours == 0
    assert len(_hours(manifest)) == HOURS
    run = r.run_once(T0 + HOUR_NS + age)
    assert run.hours == 1 and run.parts == 1 and run.rows > 0
    assert _hours(manifest) == {T0 + h * HOUR_NS for h in range(1, HOURS)}
    assert not (tmp_path / "partitions" / hour_folder(T0)).exists(), "files and folder are gone"
    assert (tmp_path / "partitions" / hour_folder(T0 + HOUR_NS)).is_dir()
    assert r.hours_dropped == 1 and r.rows_dropped == run.rows
    store.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(now_offset=st.integers(-HOUR_NS, (HOURS + 3) * HOUR_NS), age_min=st.integers(0, 6 * 60))
def test_exactly_the_wholly_expired_hours_are_dropped(
    tmp_path_factory: pytest.TempPathFactory, now_offset: int, age_min: int
) -> None:
    root = tmp_path_factory.mktemp("ret")
    manifest, store = _store(root, n=120)
    before = {p.hour: p.rows for p in manifest.state.parts}
    now, age = T0 + now_offset, age_min * MINUTE_NS
    run = Retention(root, manifest, RetentionConfig(max_age_ns=age)).run_once(now)
    expired = {h for h in before if h + HOUR_NS <= now - age}  # the oracle: the rule as written
    assert _hours(manifest) == set(before) - expired
    assert run.hours == len(expired)
    assert run.rows == sum(before[h] for h in expired)
    store.close()


def test_a_pinned_reader_keeps_the_files_until_it_lets_go(tmp_path: Path) -> None:
    manifest, store = _store(tmp_path)
    r = Retention(tmp_path, manifest, RetentionConfig(max_age_ns=0))
    with manifest.pin() as state:
        files = [tmp_path / f for p in state.parts for f in p.files.values()]
        assert r.run_once(T0 + (HOURS + 1) * HOUR_NS).hours == HOURS
        assert manifest.state.parts == ()
        assert all(f.exists() for f in files), "a pinned state's files stay while it is pinned"
    assert not any(f.exists() for f in files)
    r.run_once(T0 + (HOURS + 1) * HOUR_NS)  # the next run sweeps the empty hour folders
    assert list((tmp_path / "partitions").iterdir()) == []
    store.close()


def test_maybe_run_waits_every_s_between_runs(tmp_path: Path) -> None:
    manifest, store = _store(tmp_path)
    clock = [100.0]
    r = Retention(tmp_path, manifest, RetentionConfig(max_age_ns=HOUR_NS, every_s=60), monotonic=lambda: clock[0])
    assert r.maybe_run() is not None
    clock[0] += 59
    assert r.maybe_run() is None
    clock[0] += 1
    assert r.maybe_run() is not None
    assert r.runs == 2
    store.close()
