"""benchmarks/beam_coverage.py on real evaluations (tests/eval_fixtures.py): each model's Recall at
the depth its ranks.json holds, by hand from the ranks, and the pooled difference on common users."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from benchmarks.beam_coverage import main
from cluster.eval_record import read_ranks
from gream.paired import align


def test_coverage_by_hand(evaluated_run, results_folder, tmp_path):
    run = evaluated_run.run_path
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(evaluated_run.model_dump(mode="json")))
    assert main(["--spec", str(spec), "--names", "SFT", "SASRec", "--left", f"{run}:sft",
                 "--right", f"{run}:baselines/sasrec", "--name", "cov"]) == 0
    rec = json.loads((results_folder / "cov.json").read_text())
    f, iv = rec["figures"], rec["intervals"]
    sft, sasrec = read_ranks(run / "sft").splits["valid"], read_ranks(run / "baselines/sasrec").splits["valid"]
    depth = min(read_ranks(run / "sft").depth, read_ranks(run / "baselines/sasrec").depth)
    assert f["depth"] == depth and set(iv) >= {"all", "head", "tail"}
    held = {name: (s.ranks >= 0) & (s.ranks < depth) for name, s in (("SFT", sft), ("SASRec", sasrec))}
    assert f["recall"]["SFT"]["valid"]["all"] == pytest.approx(held["SFT"].mean())
    assert f["recall"]["SASRec"]["valid"]["all"] == pytest.approx(held["SASRec"].mean())
    tail = np.asarray(sft.segments["tail"], dtype=bool)
    assert f["recall"]["SFT"]["valid"]["tail"] == pytest.approx(held["SFT"][tail].mean())
    a, b = align(sft.users, sasrec.users)
    pooled = iv["all"]["valid"]
    assert pooled["users"] == len(a) > 0
    assert pooled["metrics"][f"recall@{depth}"]["diff"] == pytest.approx(
        (held["SFT"][a].astype(float) - held["SASRec"][b]).mean())
