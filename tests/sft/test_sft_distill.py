"""SFT with offline distillation from a SASRec (`sft.distill`, sft/distill.py) on real Office data:
which targets the teacher gives, what it conditions on, the loss against plain cross-entropy, a short
DeepSpeed run, and a path that is no scorer of the catalogue refused naming the key."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gream.cli import main
from indexing.build import run as build_index
from indexing.dataset import Example, load_from_spec, split_from_spec
from sft.batches import collate, token_loss
from sft.hf_folder import load_backbone
from sft.prompts import HistoryWriter, uses_bare_prompts
from sft.sasrec import SASRec, SasrecConfig, encode, fit
from sft.sasrec_scorer import load_scorer, save_scorer
from sft.sid_losses import sft_objective
from sft.trainer import Trainer, load_index
from tests.sft.test_sft_trainer import make_spec

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def office(tmp_path_factory) -> tuple[Path, Path]:
    """A run folder with the Office index, and a SASRec teacher trained for two epochs on its split."""
    root = tmp_path_factory.mktemp("distill")
    spec = make_spec(root)
    build_index(spec)
    ds = load_from_spec(spec)
    cfg = SasrecConfig(hidden=16, blocks=1, dropout=0.0, lr=5e-3, batch_size=512, max_epochs=2)
    fitted = fit(split_from_spec(spec, ds), ds.num_items, spec.data.max_history, spec.eval.ks, cfg, CPU)
    save_scorer(root / "teacher", fitted.model, cfg, ds.name, ds.num_items)
    return root, root / "teacher"


@pytest.mark.heavy
def test_next_item_sids_get_the_teachers_distribution_given_the_items_before_them(office):
    root, teacher_dir = office
    spec = make_spec(root, distill={"path": str(teacher_dir), "alpha": 0.5, "temperature": 2.0})
    trainer = Trainer(spec)
    examples = [e for e in trainer.align if e.task == "seqrec"][:8]
    batch = collate(examples, trainer.tok.pad_token_id)
    teacher = trainer.distiller.targets(examples, batch.targets)
    depth = trainer.distiller.depth
    # Every history SID but the first, and the answer: len(history) SIDs per example.
    assert int((teacher.rows >= 0).sum()) == depth * sum(len(e.items) - 1 for e in examples)
    assert torch.equal(teacher.rows >= 0, (teacher.rows >= 0) & (batch.targets >= 0))
    # The answer's distribution is the SASRec's on the whole history, the third history SID's on the
    # first two items; tempered by 2.
    model, _ = load_scorer(teacher_dir)
    items = trainer.distiller.items
    for row, example in enumerate(examples[:2]):
        starts = (teacher.rows[row] >= 0).nonzero()[:, 0]
        for start, history in ((starts[-depth], example.items[:-1]), (starts[depth], example.items[:2])):
            seqs, _ = encode([Example(0, history, -1)], model.max_len, model.pad)
            with torch.no_grad():
                want = model.scores(seqs)[0, items] / 2.0
            assert torch.allclose(teacher.logits[teacher.rows[row, start]], want, atol=1e-5)

    trie = trainer.objective.args[0]
    with torch.no_grad():
        plain = float(token_loss(trainer.model.eval(), batch, CPU))
        distilled = float(token_loss(trainer.model, batch, CPU, objective=trainer.objective, teacher=teacher))
        off = sft_objective(spec.sft, trie, replace(trainer.distiller.tables, alpha=0.0))
        alpha_zero = float(token_loss(trainer.model, batch, CPU, objective=off, teacher=teacher))
    # An untrained model spreads its mass alike over every code, so the teacher changes the loss little.
    assert distilled != plain and alpha_zero == pytest.approx(plain, rel=1e-6)


@pytest.mark.heavy
def test_history_item_tokens_get_the_teachers_distribution_over_the_items(office, tmp_path):
    root, teacher_dir = office
    shutil.copytree(root / "index", tmp_path / "index")
    spec = make_spec(tmp_path, loss="trie_ce", history_input="item",
                     distill={"path": str(teacher_dir), "alpha": 0.5, "temperature": 2.0})
    trainer = Trainer(spec)
    examples = [e for e in trainer.align if e.task == "seqrec"][:8]
    batch = collate(examples, trainer.tok.pad_token_id)
    teacher = trainer.distiller.targets(examples, batch.targets)
    item_ids = trainer.distiller.item_ids
    is_item = torch.isin(batch.targets, torch.tensor(list(item_ids.values())))
    for row, example in enumerate(examples):
        # One token per history item, each a target; the answer is the target's SID.
        assert [t for t in example.input_ids if t in trainer.distiller.item_of] == [item_ids[i] for i in example.items[:-1]]
        assert batch.targets[row][is_item[row]].tolist() == [item_ids[i] for i in example.items[:-1]]
    depth = trainer.distiller.depth
    assert int((is_item & (teacher.rows >= 0)).sum()) == sum(len(e.items) - 2 for e in examples)
    assert int((~is_item & (teacher.rows >= 0)).sum()) == depth * len(examples)
    # The third history item's distribution: the SASRec's on the first two items, over the items in
    # token order, tempered by 2.
    model, _ = load_scorer(teacher_dir)
    example = examples[0]
    third = is_item[0].nonzero()[2, 0]
    seqs, _ = encode([Example(0, example.items[:2], -1)], model.max_len, model.pad)
    with torch.no_grad():
        want = model.scores(seqs)[0, sorted(item_ids)] / 2.0
    assert torch.allclose(teacher.items[teacher.rows[0, third]], want, atol=1e-5)
    trie = trainer.objective.args[0]
    with torch.no_grad():
        plain = float(token_loss(trainer.model.eval(), batch, CPU, objective=trainer.objective))
        off = sft_objective(spec.sft, trie, replace(trainer.distiller.tables, alpha=0.0),
                            items=trainer.objective.keywords["items"])
        alpha_zero = float(token_loss(trainer.model, batch, CPU, objective=off, teacher=teacher))
        distilled = float(token_loss(trainer.model, batch, CPU, objective=trainer.objective, teacher=teacher))
    assert alpha_zero == pytest.approx(plain, rel=1e-6) and distilled != plain


@pytest.mark.heavy
@pytest.mark.parametrize("history_input, prompt", [("sid", "chat"), ("item", "chat"), ("sid", "bare")])
def test_a_distilled_trie_masked_run_lowers_its_loss(office, tmp_path, history_input, prompt):
    root, teacher_dir = office
    shutil.copytree(root / "index", tmp_path / "index")
    # Validated on 20 users after the last epoch: the beam reads prompts written as the model learnt them.
    spec = make_spec(tmp_path, loss="trie_ce", history_input=history_input, prompt=prompt,
                     distill={"path": str(teacher_dir)}, eval_every=2, eval_users=20)
    trainer = Trainer(spec)
    batch_examples = [e for e in trainer.align if e.task == "seqrec"][:8]
    batch = collate(batch_examples, trainer.tok.pad_token_id)
    teacher = trainer.distiller.targets(batch_examples, batch.targets)

    def loss(model, distilled: bool = True) -> float:
        with torch.no_grad():
            return float(token_loss(model.eval(), batch, CPU, objective=trainer.objective,
                                    teacher=teacher if distilled else None))

    before = loss(trainer.model)
    model, tok = load_backbone(trainer.train())
    assert json.loads(spec.layout.train_summary.read_text())["selection"]["valid_users"] == 20
    # The saved folder tells evaluation, RL and serving how to write a history.
    assert HistoryWriter.for_model(tok, load_index(spec)[0]).item_tokens == (history_input == "item")
    assert uses_bare_prompts(tok) == (prompt == "bare")
    assert loss(model) < 0.9 * before
    # Trained, the model is sure of the targets and the teacher is not: the soft term is no copy of
    # the one-hot one.
    assert abs(loss(model) - loss(model, distilled=False)) > 0.01


def test_a_path_that_is_no_scorer_of_the_catalogue_exits_2_naming_the_key(tmp_path, capsys):
    toy = SasrecConfig(hidden=8, blocks=1)
    save_scorer(tmp_path / "toy", SASRec(4, 3, toy), toy, "Toy", 4)
    for path in (tmp_path / "missing", tmp_path / "toy"):
        assert main(["sft", "configs/demo.yaml", "--set", f"run_dir={tmp_path / 'run'}",
                     "--set", f"sft.distill.path={path}"]) == 2
        err = capsys.readouterr().err
        assert "sft.distill.path" in err and str(path) in err
    assert not (tmp_path / "run/sft").exists()  # refused before anything was written


def test_the_demo_distils_from_the_sasrec_it_trains():
    """configs/demo.yaml: a SASRec stage with the tuned settings before SFT, and SFT distilling from it."""
    from cluster.spec import load_spec

    demo = load_spec(Path(__file__).resolve().parents[2] / "configs/demo.yaml")
    assert demo.stages == ["index", "sasrec", "sft", "rl", "eval"]
    assert demo.trains_teacher(demo.sft.distill.path) and Path(demo.sasrec.config).is_file()
    assert demo.sft.distill.alpha == 0.5 and demo.sft.distill.temperature == 1.0
