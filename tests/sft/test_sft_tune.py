"""`gream sft --tune` on real Office data with a tiny backbone: every trial recorded, the budget kept."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from indexing.build import run as build_index
from sft.hf_folder import load_backbone
from sft.sft_tune import SftSettings
from sft.sft_tune import run as tune
from sft.tuning import grid_configs
from tests.sft.test_sft_trainer import make_spec

pytestmark = pytest.mark.heavy  # trains

REPO = Path(__file__).resolve().parents[2]


def test_every_trial_is_recorded_and_the_budget_stops_the_search(tmp_path):
    spec = make_spec(tmp_path, tasks=["seqrec"], epochs=1, eval_users=8)
    build_index(spec)
    grid = {"objective": ("ce", "trie_ce+pairwise"), "hidden_size": (32,)}
    record = json.loads(tune(spec, 600, grid).read_text())
    trials = record["trials"]
    assert [t["settings"] for t in trials] == [asdict(c) for c in grid_configs(SftSettings.of(spec), grid)]
    assert {t["settings"]["objective"] for t in trials} == {"ce", "trie_ce+pairwise"}
    assert record["configs"] == 2 and record["metric"] == "ndcg@10" and record["budget_s"] == 600
    for t in trials:
        folder = Path(t["run_dir"])
        assert not t["out_of_time"] and t["epochs"] == t["settings"]["epochs"] == 1 and t["secs"] >= t["train_secs"]
        assert "sft.prefix_loss.kind=" + ("pairwise" if "+" in t["settings"]["objective"] else "none") in t["overrides"]
        assert load_backbone(folder / "sft/model")[0].config.hidden_size == 32  # the trial's settings were trained
        assert not (folder / "sft/checkpoints").exists()
        summary = json.loads((folder / "sft/train_summary.json").read_text())
        assert summary["selection"]["valid"] == t["valid"]
    best = max(trials, key=lambda t: t["valid"]["ndcg@10"])
    assert record["chosen"] == {k: best[k] for k in ("settings", "overrides", "run_dir")}
    # A budget spent during the first trial's first epoch: that trial stops there, validated, and no other starts.
    record = json.loads(tune(spec.model_copy(update={"sft": spec.sft.model_copy(update={"epochs": 2})}), 1e-3,
                             grid).read_text())
    assert len(record["trials"]) == 1 and sorted(p.name for p in spec.layout.sft_tune.iterdir()) == ["trial-00", "tune.json"]
    (only,) = record["trials"]
    assert only["out_of_time"] and only["epochs"] == 1 and only["settings"]["epochs"] == 2 and "ndcg@10" in only["valid"]


def test_cli_tune_needs_a_budget_and_a_budget_needs_tune(capsys):
    from gream.cli import main

    demo = str(REPO / "configs/demo.yaml")
    assert main(["sft", demo, "--tune"]) == 2
    assert "--tune needs --budget-s SECONDS" in capsys.readouterr().err
    assert main(["sft", demo, "--budget-s", "60"]) == 2
    assert "--budget-s is the wall time of --tune" in capsys.readouterr().err
    assert main(["sft", demo, "--tune", "--budget-s", "60", "--resume"]) == 2
    assert "--tune starts a new search" in capsys.readouterr().err
