"""benchmarks/rl_gain.py's validation-curve plot from a results file, without any run."""
from __future__ import annotations

import json

from benchmarks.rl_gain import main


def test_plot_only_draws_every_curve_from_rl_gain_json(tmp_path):
    curve = {"0": 0.0563, "10": 0.0571, "20": 0.0566}
    result = {"date": "2026-12-04 16:34", "recipes": {
        "ce_anchor": {"curves": {"seed0": {"val_ndcg@10": curve, "selected_step": 10, "last_step": 20}}},
        "beam_inject_sft": {"curves": {"seed0": {"val_ndcg@10": {"0": 0.0563, "10": 0.0575}, "selected_step": 10,
                                                 "last_step": 10}}}}}
    (tmp_path / "rl_gain.json").write_text(json.dumps(result))
    assert main(["--base", str(tmp_path), "--out", str(tmp_path), "--plot-only"]) == 0
    png = (tmp_path / "rl_gain.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
