"""Benchmark scripts write their results files where GREAM_BENCH_RESULTS points: in a test, a
folder of its own, so a test run never replaces a measurement in benchmarks/results/."""
from __future__ import annotations

import pytest

from benchmarks.results import RESULTS_ENV


@pytest.fixture(autouse=True)
def results_folder(tmp_path, monkeypatch):
    folder = tmp_path / "bench_results"
    monkeypatch.setenv(RESULTS_ENV, str(folder))
    return folder
