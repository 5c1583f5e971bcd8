"""benchmarks/letter_quality.py: the median over seeds and the table beside the published rows."""
from __future__ import annotations

import pytest

from benchmarks.letter_quality import KEYS, PUBLISHED, main, median_test_metrics


def test_median_over_seeds_skips_unfinished_runs():
    runs = [{"test": {"recall@10": 0.05, "ndcg@10": 0.02}}, None, {"test": {"recall@10": 0.07}},
            {"test": {"recall@10": 0.06, "ndcg@10": 0.04}}]
    out = median_test_metrics(runs)
    assert out["recall@10"] == pytest.approx(0.06)
    assert out["ndcg@10"] == pytest.approx(0.03)
    assert out["pass@1"] is None and set(out) == set(KEYS)


def test_table_only_prints_published_rows_beside_missing_runs(tmp_path, capsys):
    assert main(["--table-only", "--out", str(tmp_path), "--datasets", "beauty", "instruments"]) == 0
    text = capsys.readouterr().out
    assert "median of 0 SFT run(s)" in text
    assert f"{PUBLISHED['beauty']['TIGER']['recall@10']:.4f}" in text
    assert f"{PUBLISHED['instruments']['GREAM']['pass@10']:.4f}" in text
