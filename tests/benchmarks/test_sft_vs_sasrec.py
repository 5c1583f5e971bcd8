"""benchmarks/sft_vs_sasrec.py: the SASRec side and the error for a run without it (pure, no runs)."""
import json

import pytest

from benchmarks.sft_vs_sasrec import sasrec_all_users


def test_reads_the_all_user_figures_and_names_a_missing_file(tmp_path):
    folder = tmp_path / "baselines" / "sasrec"
    folder.mkdir(parents=True)
    all_users = {"valid": {"recall@10": 0.12}, "test": {"recall@10": 0.1}}
    (folder / "eval.json").write_text(json.dumps({"test": {"recall@10": 0.09}, "meta": {"all_users": all_users}}))
    assert sasrec_all_users(tmp_path) == all_users
    with pytest.raises(SystemExit, match=r"other/baselines/sasrec/eval.json: no SASRec evaluation"):
        sasrec_all_users(tmp_path / "other")
