"""`gream compare` on real evaluations (tests/eval_fixtures.py) and its errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cluster.eval_record import read_eval, read_ranks
from gream.cli import main
from gream.compare import compare, load_stage, parse_stage
from gream.paired import align
from sft.metrics import per_example_metrics
from tests.eval_fixtures import RL_USERS, SFT_USERS

NAMES = ["recall@1", "recall@5", "recall@10", "ndcg@5", "ndcg@10"]
LISTS = ["tail_share@10", "novelty@10", "distinct_codes@10", "coverage@10"]  # an imported index: no text distance


def test_stage_argument_is_run_dir_colon_stage(tmp_path):
    assert str(parse_stage("runs/x:baselines/sasrec")) == "runs/x/baselines/sasrec"
    assert main(["compare", "runs/x", "runs/y:sft"]) == 2


def test_compare_json_on_real_runs(evaluated_run, capsys):
    run = evaluated_run.run_path
    assert main(["compare", f"{run}:sft", f"{run}:rl", f"{run}:baselines/sasrec", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"] == NAMES + LISTS and set(out["splits"]) == {"valid", "test"}
    for split, data in out["splits"].items():
        for i, stage in enumerate(("sft", "rl", "baselines/sasrec")):
            figures = read_eval(run / stage)[split]
            assert {m: data["values"][m][i] for m in NAMES + LISTS} == pytest.approx(
                {m: figures[m] for m in NAMES + LISTS}, abs=1e-12)
        same_model, sasrec = data["comparisons"]
        # rl/ holds the same model on more users: compared on the SFT_USERS both hold, it differs by nothing.
        assert (same_model["users_a"], same_model["users_b"], same_model["common_users"]) == (SFT_USERS, RL_USERS, SFT_USERS)
        assert all(m == {"diff": 0.0, "low": 0.0, "high": 0.0, "verdict": "no difference"}
                   for m in same_model["metrics"].values())
        # SASRec was evaluated on every user: the difference is over the SFT users, recomputed here.
        a, b = read_ranks(run / "sft").splits[split], read_ranks(run / "baselines/sasrec").splits[split]
        ia, ib = align(a.users, b.users)
        assert len(ia) == sasrec["common_users"] == SFT_USERS and sasrec["users_b"] > 4000
        pa, pb = per_example_metrics(a.ranks[ia], [1, 5, 10]), per_example_metrics(b.ranks[ib], [1, 5, 10])
        for m in NAMES:
            got = sasrec["metrics"][m]
            assert got["diff"] == pytest.approx(float(np.mean(pb[m] - pa[m])))
            assert got["low"] <= got["diff"] <= got["high"]
            assert got["verdict"] == ("no difference" if got["low"] <= 0 <= got["high"] else
                                      "higher" if got["diff"] > 0 else "lower")


def test_compare_table_notes_different_users(evaluated_run, capsys):
    run = evaluated_run.run_path
    assert main(["compare", f"{run}:sft", f"{run}:rl", "--resamples", "200"]) == 0
    text = capsys.readouterr().out
    assert f"note: not the same users; B-A on the {SFT_USERS} users both hold" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("recall@10"))
    assert row.split()[-2:] == ["no", "difference"] and "[+0.0000, +0.0000]" in row
    assert "200 resamples of users, seed 0, 95% intervals" in text


def test_compare_beyond_accuracy_with_paired_intervals(evaluated_run, capsys):
    """SFT model against SASRec: each per-user metric's difference is the mean over the common users of
    the stored values, coverage's is that of the two sets of lists over those users."""
    run = evaluated_run.run_path
    assert main(["compare", f"{run}:sft", f"{run}:baselines/sasrec", "--resamples", "300"]) == 0
    table = capsys.readouterr().out
    for name in LISTS:
        row = next(line for line in table.splitlines() if line.strip().startswith(name))
        low, high = (float(x) for x in row.split("[")[1].split("]")[0].split(","))
        assert low <= float(row.split()[3]) <= high
    assert main(["compare", f"{run}:sft", f"{run}:baselines/sasrec", "--json", "--resamples", "300"]) == 0
    out = json.loads(capsys.readouterr().out)
    for split, data in out["splits"].items():
        a, b = read_ranks(run / "sft"), read_ranks(run / "baselines/sasrec")
        ia, ib = align(a.splits[split].users, b.splits[split].users)
        got = data["comparisons"][0]["metrics"]
        for name in LISTS[:-1]:
            want = float(np.mean(b.splits[split].lists[name][ib] - a.splits[split].lists[name][ia]))
            assert got[name]["diff"] == pytest.approx(want)
        covered = [len(set(r.splits[split].top[i].ravel().tolist())) for r, i in ((a, ia), (b, ib))]
        assert got["coverage@10"]["diff"] == pytest.approx((covered[1] - covered[0]) / a.items)
        assert got["coverage@10"]["low"] <= got["coverage@10"]["diff"] <= got["coverage@10"]["high"]
        assert got["coverage@10"]["verdict"] == ("higher" if got["coverage@10"]["low"] > 0 else
                                                 "lower" if got["coverage@10"]["high"] < 0 else "no difference")


def test_compare_one_segment_uses_the_labelled_examples_only(evaluated_run, capsys):
    run = evaluated_run.run_path
    assert main(["compare", f"{run}:sft", f"{run}:baselines/sasrec", "--segment", "tail", "--json",
                 "--resamples", "200"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["segment"] == "tail"
    for split, data in out["splits"].items():
        a, b = (read_ranks(run / stage).splits[split] for stage in ("sft", "baselines/sasrec"))
        # Both evaluations label the same data alike.
        ia, ib = align(a.users, b.users)
        assert (a.segments["tail"][ia] == b.segments["tail"][ib]).all()
        ta, tb = a.only("tail"), b.only("tail")
        assert data["users"] == [len(ta.users), len(tb.users)] and 0 < len(ta.users) < len(a.users)
        ja, jb = align(ta.users, tb.users)
        want = float(np.mean(per_example_metrics(tb.ranks[jb], [10])["recall@10"]
                             - per_example_metrics(ta.ranks[ja], [10])["recall@10"]))
        assert data["comparisons"][0]["metrics"]["recall@10"]["diff"] == pytest.approx(want)
        # eval.json's per-segment figures are the labelled examples' own.
        seg = read_eval(run / "sft")["segments"][split]["tail"]
        assert seg["users"] == len(ta.users)
        assert seg["recall@10"] == pytest.approx(float(per_example_metrics(ta.ranks, [10])["recall@10"].mean()))


def test_missing_or_stale_ranks_exit_2_naming_the_file(evaluated_run, tmp_path, capsys):
    run = evaluated_run.run_path
    shutil.copytree(run / "sft", tmp_path / "sft")
    (tmp_path / "sft" / "ranks.json").unlink()
    assert main(["compare", f"{tmp_path}:sft", f"{run}:rl"]) == 2
    assert f"{tmp_path / 'sft' / 'ranks.json'}: no per-user ranks" in capsys.readouterr().err
    shutil.copytree(run / "baselines", tmp_path / "baselines")
    figures = read_eval(tmp_path / "baselines/sasrec")
    figures["test"]["ndcg@10"] += 0.01
    (tmp_path / "baselines/sasrec/eval.json").write_text(json.dumps(figures))
    assert main(["compare", f"{run}:sft", f"{tmp_path}:baselines/sasrec"]) == 2
    assert "but eval.json says" in capsys.readouterr().err
    with pytest.raises(Exception, match="at least two stages"):
        compare([load_stage(f"{run}:sft")])
    # Ranks written before the long-tail labels existed: --segment names the file's stage and what to do.
    shutil.copy(run / "sft/ranks.json", tmp_path / "sft/ranks.json")
    ranks = json.loads((tmp_path / "sft/ranks.json").read_text())
    for split in ranks["splits"].values():
        split.pop("segments")
    (tmp_path / "sft/ranks.json").write_text(json.dumps(ranks))
    assert main(["compare", f"{tmp_path}:sft", f"{run}:rl", "--segment", "head"]) == 2
    assert "labels no 'head' segment" in capsys.readouterr().err
