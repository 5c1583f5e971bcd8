"""benchmarks/sft_seeds.py: the per-seed table and its median from tiny eval files (pure, no runs)."""
import json
from pathlib import Path

from benchmarks.sft_seeds import main, metric_column, seed_stages

REPO = Path(__file__).resolve().parents[2]


def test_metric_column_orders_valid_before_test_and_marks_missing():
    col = metric_column({"valid": {"recall@10": 0.1}, "test": {"recall@10": 0.2, "pass@10": 0.05}})
    assert list(col)[:6] == [f"valid {k}" for k in ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "pass@1", "pass@10")]
    assert col["valid recall@10"] == 0.1 and col["test pass@10"] == 0.05 and col["test ndcg@5"] is None
    assert all(v is None for v in metric_column(None).values())


def test_table_only_prints_median_and_seeds(tmp_path, capsys):
    for seed, r10 in ((0, 0.07), (1, 0.09), (2, 0.08)):
        (tmp_path / f"seed{seed}" / "sft").mkdir(parents=True)
        (tmp_path / f"seed{seed}" / "sft" / "eval.json").write_text(json.dumps({"test": {"recall@10": r10}}))
    assert main(["--table-only", "--out", str(tmp_path), "--seeds", "0", "1", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split() == ["median", "seed", "0", "seed", "1", "seed", "2"]
    row = next(x for x in lines if x.startswith("test recall@10")).split()[-4:]
    assert row == ["0.0800", "0.0700", "0.0900", "0.0800"]


def test_a_spec_that_trains_its_teacher_runs_that_stage_before_sft():
    demo = REPO / "configs/demo.yaml"  # sft.distill names the SASRec its stage sasrec trains
    assert seed_stages(demo, []) == ["index", "sasrec", "sft", "eval"]
    assert seed_stages(demo, ["stages=[index,sft,eval]", "sft.distill.path=null"]) == ["index", "sft", "eval"]
