"""SASRec+GRASP (sft/grasp.py): retrieval on hand-made vectors, sigmoid fusion weights, no row sees
its own user or future, and a run on the Office split through the CLI."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cluster.errors import BadRequest
from indexing.dataset import Example
from indexing.neighbours import NeighbourError, retrieve
from sft.grasp import Grasp, GraspSASRec, SigmoidAttention, item_features, user_bank
from sft.sasrec import SasrecConfig

ROOT = Path(__file__).resolve().parents[2]


def test_retrieve_returns_the_nearest_by_cosine():
    bank = np.array([[1.0, 0], [0.9, 0.1], [0, 1], [-1, 0], [0.5, 0.5]])
    # Query (1, 0.2): cosines 0.98, 0.999, 0.196, -0.98, 0.83 -> rows 1, 0, 4.
    assert retrieve(np.array([[1.0, 0.2]]), bank, 3).tolist() == [[1, 0, 4]]
    # Scale does not matter (cosine), and a row with the query's id is skipped.
    assert retrieve(np.array([[10.0, 2.0]]), bank, 2, [1], [0, 1, 2, 3, 4]).tolist() == [[0, 4]]
    with pytest.raises(NeighbourError, match="k=5 neighbours from 5 candidates"):
        retrieve(bank, bank, 5)


def test_item_features_are_own_and_mean_of_neighbours():
    desc = np.array([[1.0, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    feats = item_features(desc, 1)
    assert feats.shape == (4, 2, 2)
    np.testing.assert_allclose(feats[:, 0], desc)
    np.testing.assert_allclose(feats[:, 1], desc[[1, 0, 3, 2]])  # each item's nearest other item


def test_sigmoid_attention_weights_are_independent_sigmoids():
    torch.manual_seed(0)
    att = SigmoidAttention(4)
    q, f = torch.randn(3, 4), torch.randn(3, 2, 4)
    out, w = att(q, f)
    by_hand = torch.sigmoid(torch.einsum("bmh,bh->bm", att.key(f), q) / 2.0)  # sqrt(4)
    torch.testing.assert_close(w, by_hand)
    torch.testing.assert_close(out, (w[..., None] * att.value(f)).sum(1))
    assert not torch.allclose(w.sum(1), torch.ones(3))  # not a softmax


def test_context_leaves_out_the_rows_own_user_and_future():
    desc = np.eye(4, dtype=np.float32)
    train = [Example(user=0, history=(0,), target=1), Example(user=0, history=(0, 1), target=2),
             Example(user=1, history=(3,), target=2)]
    users, bank = user_bank(train, desc)
    assert users.tolist() == [0, 1]
    np.testing.assert_allclose(bank, [[1 / 3, 1 / 3, 1 / 3, 0], [0, 0, 0.5, 0.5]])
    grasp = Grasp(desc, train, k=1, max_len=5)
    ctx = grasp.context(train[:1]).numpy()
    np.testing.assert_allclose(ctx[0, 0], desc[0])  # the prefix only: item 0, not 1 or 2
    np.testing.assert_allclose(ctx[0, 1], bank[1])  # user 0 itself is never its own neighbour
    with pytest.raises(BadRequest, match="objective 'last'"):
        grasp.check(SasrecConfig(objective="shifted"))
    model = GraspSASRec(4, 5, SasrecConfig(hidden=8), grasp.items)
    assert model.item_table().shape == (5, 8)
    with pytest.raises(BadRequest, match="context"):
        model.scores(torch.tensor([[4, 0]]))


@pytest.mark.heavy
def test_grasp_baseline_on_office(tmp_path):
    from gream.cli import main

    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"hidden": 32, "blocks": 1, "max_epochs": 1, "objective": "last"}))
    code = main(["baseline", "sasrec", str(ROOT / "configs/demo.yaml"), "--set", f"run_dir={tmp_path}",
                 "--set", "index.text_fields=[title]", "--set", "index.max_text_chars=64",
                 "--config", str(cfg), "--grasp", "10"])
    assert code == 0
    out = json.loads((tmp_path / "baselines" / "sasrec_grasp" / "eval.json").read_text())
    assert out["valid"]["users"] == out["test"]["users"] > 0 and 0 < out["test"]["recall@10"] < 1
    assert set(out["segments"]["test"]) == {"head", "tail", "short", "long"}
    assert (tmp_path / "baselines" / "sasrec_grasp" / "ranks.json").exists()
    assert not (tmp_path / "baselines" / "sasrec").exists()
    assert main(["baseline", "sasrec", str(ROOT / "configs/demo.yaml"), "--set", f"run_dir={tmp_path}",
                 "--grasp", "10", "--tune"]) == 2
