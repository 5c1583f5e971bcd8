"""benchmarks/quality.py on real evaluations (tests/eval_fixtures.py) laid out as seed runs."""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

from benchmarks.quality import main
from cluster.eval_record import read_eval
from tests.eval_fixtures import RL_USERS, SFT_USERS


@pytest.fixture()
def seed_runs(evaluated_run, tmp_path):
    """Two SFT "seeds" (the sft/ evaluation and the same model's rl/ one on more users) and two
    SASRec seeds (copies of the one SASRec evaluation); the spec as YAML for the split sizes."""
    run = evaluated_run.run_path
    for name, src, dst in (("sft0", "sft", "sft"), ("sft1", "rl", "sft"), ("sasrec0", "baselines/sasrec", "baselines/sasrec"),
                           ("sasrec1", "baselines/sasrec", "baselines/sasrec")):
        shutil.copytree(run / src, tmp_path / name / dst)
    (tmp_path / "sft0/sft/train_summary.json").write_text(json.dumps({"train_secs": 12.5}))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(evaluated_run.model_dump(mode="json")))
    args = ["--sft", str(tmp_path / "sft0"), str(tmp_path / "sft1"),
            "--sasrec", str(tmp_path / "sasrec0"), str(tmp_path / "sasrec1"), "--spec", str(spec)]
    return run, args


def test_quality_report_figures_pairs_and_pool(seed_runs, capsys):
    run, args = seed_runs
    assert main([*args, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    sft, rl, sasrec = (read_eval(run / s) for s in ("sft", "rl", "baselines/sasrec"))
    for split in ("valid", "test"):
        for m in ("recall@5", "recall@10", "ndcg@5", "ndcg@10"):
            key = f"{split} {m}"
            assert r["columns"]["sft 0"][key] == pytest.approx(sft[split][m], abs=1e-12)
            assert r["columns"]["sft 1"][key] == pytest.approx(rl[split][m], abs=1e-12)
            assert r["medians"]["SFT med"][key] == pytest.approx((sft[split][m] + rl[split][m]) / 2)
            assert r["medians"]["SASRec med"][key] == pytest.approx(sasrec[split][m])
        assert r["users"]["sft 0"][split] == SFT_USERS and r["users"]["sft 1"][split] == RL_USERS
        assert r["users"]["sasrec 0"][split] == r["split_sizes"][split] > 4000  # every user
        # Pair 0 is `gream compare sasrec0 sft0`; the pool covers the users all four runs hold, where
        # both SFT "seeds" are the same model and both SASRec seeds the same run: the pair again.
        pair, pool = r["pairs"][0]["splits"][split], r["pooled"][split]
        assert pair["common_users"] == pool["users"] == SFT_USERS
        for m, iv in pool["metrics"].items():
            assert iv == {**pair["metrics"][m], **{k: pytest.approx(pair["metrics"][m][k]) for k in ("diff", "low", "high")}}
        # Per segment the same pairing on that segment's examples: head and tail split the users.
        head, tail = (r["segments"][seg][split] for seg in ("head", "tail"))
        assert head["users"] + tail["users"] == SFT_USERS and head["users"] > 0 and tail["users"] > 0
    assert set(r["segments"]) == {"head", "tail", "short", "long"}
    assert r["wall_secs"]["sft 0"] == {"sft train": 12.5} and "sasrec train" in r["wall_secs"]["sasrec 0"]
    assert len(r["load"]) == 3 and r["date"]


def test_quality_table_text_and_a_missing_run(seed_runs, tmp_path, capsys):
    _, args = seed_runs
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "load average" in text and f"valid {SFT_USERS}/" in text and "(NOT every user)" in text
    assert "pooled (per-user mean over seeds), test" in text and "SFT med" in text
    assert "pooled, tail segment, test" in text
    assert main(["--sft", str(tmp_path / "nowhere"), "--sasrec", str(tmp_path / "nowhere"), *args[-2:]]) == 2
    assert "nowhere/sft/ranks.json: no per-user ranks" in capsys.readouterr().err


def test_any_two_stages_with_their_names(seed_runs, tmp_path, capsys):
    """--left/--right/--names: the same figures as --sft/--sasrec, under the given labels."""
    _, args = seed_runs
    assert main([*args, "--json"]) == 0
    default = json.loads(capsys.readouterr().out)
    left = [f"{tmp_path / d}:sft" for d in ("sft0", "sft1")]
    right = [f"{tmp_path / d}:baselines/sasrec" for d in ("sasrec0", "sasrec1")]
    assert main(["--left", *left, "--right", *right, "--names", "Gen", "Base", *args[-2:], "--json"]) == 0
    named = json.loads(capsys.readouterr().out)
    assert named["names"] == ["Gen", "Base"] and set(named["medians"]) == {"Gen med", "Base med"}
    assert named["columns"]["gen 1"] == default["columns"]["sft 1"] and named["pooled"] == default["pooled"]
    assert named["wall_secs"]["gen 0"] == {"sft train": 12.5} and "sasrec train" in named["wall_secs"]["base 0"]
    assert main(["--left", *left, "--right", *right, "--names", "Gen", "Base", *args[-2:]]) == 0
    assert "Gen - Base, paired bootstrap" in capsys.readouterr().out


def test_the_quality_record_renders_its_section(seed_runs, results_folder, capsys):
    """The results file quality.py writes, under a name BENCHMARKS.md has a section for: the summary
    rows carry the pooled test interval and where the left model stands."""
    from benchmarks.report import render
    from benchmarks.results import load_all

    _, args = seed_runs
    assert main([*args, "--name", "quality_office", "--names", "SFT+distill", "SASRec", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    text = render(load_all(results_folder))
    m = r["pooled"]["test"]["metrics"]["ndcg@10"]
    row = next(line for line in text.splitlines() if line.startswith("| SFT+distill against SASRec, test NDCG@10"))
    assert f"{m['diff']:+.4f} [{m['low']:+.4f}, {m['high']:+.4f}]" in row
    assert row.split("|")[5].strip() == ("ahead" if m["low"] > 0 else "behind" if m["high"] < 0 else "level (interval spans 0)")
    assert "## SFT quality against the tuned SASRec: Office, Instruments and Beauty" in text
    tail = r["segments"]["tail"]["test"]["metrics"]["ndcg@10"]
    diffs = next(line for line in text.splitlines() if line.startswith("| Office: SFT+distill - SASRec |"))
    assert f"{tail['diff']:+.4f} [{tail['low']:+.4f}, {tail['high']:+.4f}]" in diffs  # the tail column


def test_valid_alone_leaves_test_unread(seed_runs, capsys):
    """--splits valid: every figure and interval of valid as before, none of test (a setting is chosen
    without reading test)."""
    _, args = seed_runs
    assert main([*args, "--json"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert main([*args, "--splits", "valid", "--json"]) == 0
    valid = json.loads(capsys.readouterr().out)
    assert valid["pooled"] == {"valid": both["pooled"]["valid"]}
    assert all(set(seg) == {"valid"} for seg in valid["segments"].values())
    assert all(not key.startswith("test") for column in valid["columns"].values() for key in column)
    assert set(valid["pairs"][0]["splits"]) == {"valid"} and set(valid["users"]["sft 0"]) == {"valid"}
    assert main([*args, "--splits", "valid"]) == 0
    text = capsys.readouterr().out
    assert "pooled (per-user mean over seeds), valid" in text and ", test" not in text
