"""SASRec baseline: attention mask, full-catalogue ranks, and a short real training run on Office."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cluster.spec import JobSpec
from indexing.dataset import Example
from sft.metrics import metric_names
from sft.sasrec import (
    IGNORE,
    SASRec,
    SasrecConfig,
    encode,
    length_batches,
    prefix_windows,
    target_ranks,
    training_windows,
    trim_padding,
)
from sft.sasrec_eval import run

pytestmark = pytest.mark.heavy  # starts DeepSpeed, vLLM or a training run

REPO = Path(__file__).resolve().parents[2]


def test_encode_left_pads_and_keeps_the_latest_items():
    seqs, targets = encode([Example(0, (4, 5), 6), Example(1, (1, 2, 3, 4), 5)], max_len=3, pad=9)
    assert seqs.tolist() == [[9, 4, 5], [2, 3, 4]] and targets.tolist() == [6, 5]


def test_training_windows_shift_each_users_latest_window_by_one():
    # User 0's examples are the prefixes of 1 2 3 4 (targets 2, 3, 4); user 1 has one target.
    examples = [Example(0, (1,), 2), Example(0, (1, 2), 3), Example(0, (1, 2, 3), 4), Example(1, (7,), 8)]
    inputs, targets = training_windows(examples, max_len=4, pad=9)
    assert inputs.tolist() == [[9, 1, 2, 3], [9, 9, 9, 7]]
    assert targets.tolist() == [[IGNORE, 2, 3, 4], [IGNORE, IGNORE, IGNORE, 8]]
    # A window longer than max_len keeps its latest items: every target still has its history.
    inputs, targets = training_windows(examples[:3], max_len=2, pad=9)
    assert inputs.tolist() == [[2, 3]] and targets.tolist() == [[3, 4]]


def test_prefix_windows_supervise_only_the_last_position():
    examples = [Example(1, (5,), 6), Example(1, (5, 6), 7), Example(2, (8, 9, 4), 3)]
    inputs, targets = prefix_windows(examples, max_len=3, pad=10)
    assert inputs.tolist() == [[10, 10, 5], [10, 5, 6], [8, 9, 4]]
    assert targets.tolist() == [[IGNORE, IGNORE, 6], [IGNORE, IGNORE, 7], [IGNORE, IGNORE, 3]]


def test_length_batches_cover_every_row_once_with_similar_lengths():
    lengths = torch.tensor([5, 1, 3, 1, 5, 3, 2, 2])
    batches = length_batches(lengths, batch_size=2, gen=torch.Generator().manual_seed(0))
    assert sorted(torch.cat(batches).tolist()) == list(range(8))
    # Sorted by length, then cut: each batch holds one length here, whatever order the batches come in.
    assert sorted(tuple(lengths[b].tolist()) for b in batches) == [(1, 1), (2, 2), (3, 3), (5, 5)]
    again = length_batches(lengths, batch_size=2, gen=torch.Generator().manual_seed(1))
    assert [b.tolist() for b in again] != [b.tolist() for b in batches]


def test_trimmed_batches_score_as_the_full_width_does():
    model = SASRec(num_items=9, max_len=5, cfg=SasrecConfig(dropout=0.0)).eval()
    seqs = torch.tensor([[9, 9, 9, 1, 2], [9, 9, 4, 5, 6]])
    trimmed, = trim_padding(seqs, 9)
    assert trimmed.tolist() == [[9, 1, 2], [4, 5, 6]]
    with torch.no_grad():
        assert torch.allclose(model.scores(trimmed), model.scores(seqs), atol=1e-6)


def test_attention_mask_is_causal_and_blocks_padding_keys():
    model = SASRec(num_items=9, max_len=3, cfg=SasrecConfig(heads=1))
    mask = model.attention_mask(torch.tensor([[9, 4, 5]]))[0]
    inf = float("-inf")
    assert mask.tolist() == [[0.0, inf, inf],   # the padding row sees only itself
                             [inf, 0.0, inf],   # padding key blocked, causal
                             [inf, 0.0, 0.0]]


class FixedScores(SASRec):
    """Scores set by hand, to check the rank arithmetic alone."""

    def __init__(self, table: torch.Tensor):
        super().__init__(num_items=table.shape[1], max_len=2, cfg=SasrecConfig())
        self.table = table

    def scores(self, seqs, context=None):
        return self.table[seqs[:, -1]]


def test_target_ranks_count_items_scoring_higher():
    table = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.4, 0.6]])
    model = FixedScores(table)
    seqs = torch.tensor([[4, 0], [4, 1], [4, 0]])
    ranks = target_ranks(model, seqs, torch.tensor([2, 0, 0]), batch_size=2, device=torch.device("cpu"))
    assert ranks.tolist() == [1, 3, 0]


def test_excluding_history_drops_seen_items_but_never_the_target():
    table = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.4, 0.6]])
    seqs = torch.tensor([[4, 0], [4, 1], [4, 0], [1, 0]])  # scored by the last item; 4 is padding
    targets = torch.tensor([2, 0, 0, 3])
    ranks = target_ranks(FixedScores(table), seqs, targets, batch_size=3, device=torch.device("cpu"),
                         exclude_history=True)
    # Row 0: 0.9 (item 0, seen) no longer counts; row 1: 0.8 (item 1, seen) dropped, 0.4 and 0.6 stay;
    # row 2: the target is a seen item and keeps its score; row 3: items 0 and 1 seen, 0.5 stays.
    assert ranks.tolist() == [0, 2, 0, 1]


def test_run_on_office_learns_and_writes_the_eval_schema(tmp_path):
    # Users with at least 30 interactions only: a small, real slice that trains in seconds.
    spec = JobSpec(name="s", run_dir=str(tmp_path), data={"path": str(REPO / "data/office"), "min_interactions": 30},
                   cluster={"device": "cpu"}, eval={"max_users": 40})
    path = run(spec, SasrecConfig(max_epochs=3, batch_size=256, lr=3e-3, exclude_history=True))
    out = json.loads(path.read_text())
    assert path == tmp_path / "baselines/sasrec/eval.json"
    for split in ("valid", "test"):
        # The same users as `gream eval` (the first eval.max_users), and every user under meta; no
        # index built, so no SID codes and no text: the popularity metrics of the lists only.
        assert list(out[split]) == metric_names([1, 5, 10]) + ["users", "tail_share@10", "novelty@10", "coverage@10"]
        assert out[split]["users"] == 40 and out["meta"]["all_users"][split]["users"] > 40
        assert all(0.0 <= out[split][k] <= 1.0 for k in metric_names([1, 5, 10]) + ["tail_share@10", "coverage@10"])
    # A random ranking gives recall@10 = 10/2420 = 0.004; a few epochs are well above it.
    everyone = out["meta"]["all_users"]
    assert everyone["valid"]["recall@10"] > 0.012 and everyone["test"]["ndcg@10"] <= everyone["test"]["recall@10"]
    assert out["meta"]["best_epoch"] >= 0
    # Ranked over every item too: dropping seen items only removes competitors, so no user ranks lower.
    for split in ("valid", "test"):
        assert out["meta"]["with_history"][split]["recall@10"] <= everyone[split]["recall@10"]


def test_cli_seed_reaches_the_config(monkeypatch):
    import sft.sasrec_eval
    from gream.cli import main

    seen = []
    monkeypatch.setattr(sft.sasrec_eval, "run", lambda spec, cfg: seen.append((spec.run_dir, cfg)))
    assert main(["baseline", "sasrec", str(REPO / "configs/demo.yaml"), "--seed", "2", "--set", "run_dir=/tmp/x"]) in (0, None)
    assert seen[0][0] == "/tmp/x" and seen[0][1] == SasrecConfig(seed=2)


def test_cli_config_file_takes_settings_or_a_tunes_choice(monkeypatch, tmp_path, capsys):
    import sft.sasrec_eval
    from gream.cli import main

    seen = []
    monkeypatch.setattr(sft.sasrec_eval, "run", lambda spec, cfg: seen.append(cfg))
    demo = str(REPO / "configs/demo.yaml")
    tuned = tmp_path / "tune.json"
    tuned.write_text(json.dumps({"metric": "ndcg@10", "chosen": {"hidden": 128, "lr": 0.003, "seed": 0}}))
    assert main(["baseline", "sasrec", demo, "--config", str(tuned), "--seed", "2"]) == 0
    plain = tmp_path / "cfg.json"
    plain.write_text(json.dumps({"dropout": 0.5, "loss": "sampled", "negatives": 64}))
    assert main(["baseline", "sasrec", demo, "--config", str(plain), "--negatives", "32"]) == 0
    assert seen == [SasrecConfig(hidden=128, lr=0.003, seed=2),
                    SasrecConfig(dropout=0.5, loss="sampled", negatives=32)]
    plain.write_text(json.dumps({"hiden": 64}))
    assert main(["baseline", "sasrec", demo, "--config", str(plain)]) == 2
    assert f"{plain}: unknown SASRec settings ['hiden']" in capsys.readouterr().err
    plain.write_bytes(b"\xff{")
    assert main(["baseline", "sasrec", demo, "--config", str(plain)]) == 2
    assert f"{plain}: not a readable JSON file of SASRec settings" in capsys.readouterr().err


def test_sampled_softmax_masks_a_drawn_target_and_is_full_softmax_when_it_draws_the_rest():
    from sft.sasrec import train_loss

    torch.manual_seed(0)
    model = SASRec(num_items=2, max_len=3, cfg=SasrecConfig(dropout=0.0)).eval()
    seqs, targets = torch.tensor([[2, 1, 1]]), torch.tensor([[IGNORE, IGNORE, 0]])
    full = train_loss(model, seqs, targets, SasrecConfig(loss="full"), torch.Generator()).item()
    sampled = SasrecConfig(loss="sampled", negatives=1)
    draws = set()
    for seed in range(6):
        drawn = int(torch.randint(2, (1,), generator=torch.Generator().manual_seed(seed)))
        draws.add(drawn)
        got = train_loss(model, seqs, targets, sampled, torch.Generator().manual_seed(seed)).item()
        # The only other item drawn: the softmax over {target, it} is the full one; the target itself
        # drawn: no negative left, loss 0.
        assert got == pytest.approx(full if drawn == 1 else 0.0, abs=1e-6)
    assert draws == {0, 1} and full > 0


def test_tune_picks_the_best_validation_config_and_tests_it_once(tmp_path):
    from sft.sasrec_tune import run as tune
    from tests.eval_fixtures import one_thread

    spec = JobSpec(name="s", run_dir=str(tmp_path), data={"path": str(REPO / "data/office"), "min_interactions": 30},
                   cluster={"device": "cpu"})
    grid = {"hidden": (16, 32), "loss": ("full", "sampled")}
    with one_thread():
        path = tune(spec, SasrecConfig(max_epochs=2, batch_size=256, lr=3e-3, negatives=50), 600, grid)
    out = json.loads(path.read_text())
    record = json.loads((tmp_path / "baselines/sasrec/tune.json").read_text())
    trials = record["trials"]
    assert len(trials) == 4 and record["metric"] == "ndcg@10" and record["budget_s"] == 600
    assert {(t["config"]["hidden"], t["config"]["loss"]) for t in trials} == {(16, "full"), (16, "sampled"),
                                                                            (32, "full"), (32, "sampled")}
    best = max(trials, key=lambda t: t["valid"]["ndcg@10"])
    assert record["chosen"] == best["config"] == out["meta"]["config"]
    assert {k: out["valid"][k] for k in best["valid"]} == pytest.approx(best["valid"])  # the chosen one's validation
    assert out["meta"]["tuned"] == {"trials": 4, "grid": 4, "budget_s": 600}
    assert (tmp_path / "baselines/sasrec/ranks.json").exists()
    # A budget spent before the first epoch ends: one trial, cut after that epoch, still evaluated.
    with one_thread():
        tune(spec, SasrecConfig(max_epochs=2, batch_size=256), 1e-3, grid)
    record = json.loads((tmp_path / "baselines/sasrec/tune.json").read_text())
    assert len(record["trials"]) == 1 and record["trials"][0]["out_of_time"] and record["trials"][0]["epochs"] == 1


def test_cli_tune_budget_and_its_errors(monkeypatch, tmp_path, capsys):
    import sft.sasrec_tune
    from gream.cli import main

    seen = []
    monkeypatch.setattr(sft.sasrec_tune, "run", lambda spec, cfg, budget: seen.append((cfg, budget)))
    demo = str(REPO / "configs/demo.yaml")
    assert main(["baseline", "sasrec", demo, "--tune", "--budget-s", "90", "--loss", "sampled"]) == 0
    assert seen == [(SasrecConfig(loss="sampled"), 90.0)]
    assert main(["baseline", "sasrec", demo, "--budget-s", "90"]) == 2
    assert "--budget-s is the wall time of --tune" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["baseline", "sasrec", demo, "--tune", "--set", f"run_dir={tmp_path}"]) == 2
    assert f"{tmp_path}/sft/train_summary.json: no SFT run to take the tuning budget from" in capsys.readouterr().err
    assert main(["baseline", "sasrec", demo, "--negatives", "0"]) == 2
