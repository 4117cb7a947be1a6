"""The load test, short mode: 64 concurrent agent sessions (4 application processes x 16) against
``tepo-agent serve --db`` while ``tepo-agent train --watch`` publishes versions the server
hot-swaps. Bounded: at least 20 s of load, until one version was published and served for
5 s, never past 400 s; 127.0.0.1 only; every process stopped at the end. The full
run is ``benchmarks/bench_load.py`` (its figures in RELIABILITY.md)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks.bench_load import LoadConfig, run_load


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_64_sessions_while_versions_are_published_lose_nothing(tmp_path: Path) -> None:
    config = LoadConfig(
        processes=4, sessions=16, seconds=20, every_n=16, versions=1, max_seconds=400
    )
    report = run_load(config, tmp_path)
    assert report.runs > 64 and report.turns >= report.runs
    assert report.lost == 0  # every run an application stored is in the store
    assert report.version_mismatches == 0  # per turn, the version that served it
    assert report.errors == {}  # nothing was injected, so nothing may fail
    assert math.isfinite(report.p99_turn_s) and report.p50_turn_s <= report.p99_turn_s
    assert report.published, "train --watch published no version during the load"
    assert len(report.versions_serving) >= 2, report  # the server hot-swapped under load
