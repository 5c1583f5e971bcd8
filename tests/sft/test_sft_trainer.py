"""SFT training on a real DeepSpeed engine (gloo on CPU) with real Office data, a few steps each."""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pytest
import torch

from cluster.device import autocast_dtype
from cluster.metrics_log import MetricsLog
from cluster.spec import JobSpec
from indexing.build import run as build_index
from indexing.sid import SidIndex
from sft.batches import collate, token_loss
from sft.hf_folder import load_backbone
from sft.sid_losses import sft_objective
from sft.stage import run
from sft.trainer import Trainer, add_dropout

pytestmark = pytest.mark.heavy  # starts DeepSpeed, vLLM or a training run

REPO = Path(__file__).resolve().parents[2]
OFFICE = REPO / "data/office"


def make_spec(run_dir: Path, sft_ranks: int = 1, **sft) -> JobSpec:
    return JobSpec(
        name="sft", run_dir=str(run_dir), data={"path": str(OFFICE)},
        index={"import_file": str(OFFICE / "Office.unitok5.index.json")},
        model={"hidden_size": 64, "num_layers": 1, "num_heads": 1, "bpe_vocab": 400},
        sft={"epochs": 2, "batch_size": 8, "lr": 3e-3, "max_train_examples": 16, **sft},
        cluster={"device": "cpu", "sft": {"num_ranks": sft_ranks}}, logging={"tensorboard": False})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sft")
    build_index(make_spec(root))
    return root


@torch.no_grad()
def mean_token_loss(model, tok, examples) -> float:
    return float(token_loss(model.eval(), collate(examples, tok.pad_token_id), torch.device("cpu")))


def test_full_finetune_zero2_lowers_the_loss_and_saves_a_loadable_folder(run_dir):
    spec = make_spec(run_dir, zero_stage=2)
    trainer = Trainer(spec)
    before = mean_token_loss(trainer.model, trainer.tok, trainer.align)
    path = trainer.train()
    model, tok = load_backbone(path)
    after = mean_token_loss(model, tok, trainer.align)
    assert after < before - 0.5, (before, after)
    index = SidIndex.load(run_dir / "index/Office.index.json")
    sid = index.text(index.items()[0])
    assert len(tok(sid, add_special_tokens=False)["input_ids"]) == index.depth
    summary = json.loads((run_dir / "sft/train_summary.json").read_text())
    assert summary["tokens_per_s"] > 0 and summary["align_examples"] == len(trainer.align)
    assert summary["autocast"] == "float32"
    records = [json.loads(line) for line in (run_dir / "sft/metrics.jsonl").read_text().splitlines()]
    assert records and records[-1]["step"] == summary["micro_steps"] and "loss_align" in records[-1]


def test_warmup_trains_only_the_new_rows(run_dir, tmp_path):
    spec = make_spec(run_dir, warmup_new_tokens_steps=3)
    trainer = Trainer(spec)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.warmup_new_tokens(MetricsLog(tmp_path, tensorboard=False))
    after = trainer.model.state_dict()
    emb_key = "model.embed_tokens.weight"
    new = torch.tensor(trainer.new_rows)
    old = torch.ones(before[emb_key].shape[0], dtype=torch.bool)
    old[new] = False
    assert torch.equal(before[emb_key][old], after[emb_key][old])
    assert not torch.equal(before[emb_key][new], after[emb_key][new])
    for key in before:
        if key not in (emb_key, "lm_head.weight"):
            assert torch.equal(before[key], after[key]), key
    assert all(p.requires_grad for p in trainer.model.parameters())  # unfrozen for the main phase


def test_lora_on_zero3_saves_merged_weights(run_dir, tmp_path):
    # Validated after its only epoch: the ZeRO-3 gathers of validation and selection, with LoRA.
    shutil.copytree(run_dir / "index", tmp_path / "index")  # a run of its own: run_dir holds another's checkpoints
    spec = make_spec(tmp_path, zero_stage=3, epochs=1, lora={"enabled": True, "r": 4, "alpha": 8}, eval_every=1,
                     eval_users=8)
    trainer = Trainer(spec)
    base_q = trainer.model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    base_emb = trainer.model.get_input_embeddings().weight.detach().clone()
    path = run(spec)
    model, _ = load_backbone(path)
    keys = model.state_dict().keys()
    assert not any("lora" in k or "token_adapter" in k for k in keys)
    assert not torch.equal(model.model.layers[0].self_attn.q_proj.weight, base_q)  # LoRA merged in
    emb = model.get_input_embeddings().weight
    new = trainer.new_rows
    assert not torch.equal(emb[new], base_emb[new])  # the SID rows trained
    known = min(new)
    assert torch.equal(emb[:known], base_emb[:known])  # the old vocabulary did not
    assert json.loads((tmp_path / "sft/train_summary.json").read_text())["selection"]["epoch"] == 0


def test_weight_average_is_what_gets_saved(run_dir, tmp_path, monkeypatch):
    from sft.weight_average import WeightAverage

    last = []
    copy_to = WeightAverage.copy_to

    def record_last_weights(self):
        last.extend(p.detach().clone() for p in self.params)
        copy_to(self)

    monkeypatch.setattr(WeightAverage, "copy_to", record_last_weights)
    shutil.copytree(run_dir / "index", tmp_path / "index")
    trainer = Trainer(make_spec(tmp_path, weight_average=0.5))
    path = trainer.train()
    summary = json.loads((tmp_path / "sft/train_summary.json").read_text())
    assert trainer.average.updates == summary["micro_steps"] > 2
    saved = dict(load_backbone(path)[0].named_parameters())
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert len(names) == len(trainer.average.shadow) == len(last)
    assert all(torch.equal(saved[n], avg) for n, avg in zip(names, trainer.average.shadow))
    assert not all(torch.equal(saved[n], w) for n, w in zip(names, last))  # the average trails the last step


def test_dropout_acts_in_training_mode_only(tiny_policy):
    model, _ = load_backbone(tiny_policy.model_dir)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        plain = model(ids).logits
        add_dropout(model, 0.5)
        model.eval()
        assert torch.equal(model(ids).logits, plain)
        model.train()
        first, second = model(ids).logits, model(ids).logits
    assert not torch.allclose(first, second) and not torch.allclose(first, plain)


def test_trie_masked_and_prefix_objectives_on_real_batches(run_dir, tmp_path):
    """Office prompts with every history SID supervised: each SID target is found in the trie after
    its prefix; masking raises every SID token's probability; the prefix loss adds to it; and a short
    run with both lowers that loss."""
    from sft.sid_losses import HeadView, sft_objective
    from sft.tasks import IGNORE_INDEX

    shutil.copytree(run_dir / "index", tmp_path / "index")
    spec = make_spec(tmp_path, loss="trie_ce", prefix_loss={"kind": "pairwise", "negatives": 2})
    trainer = Trainer(spec)
    masked_only = sft_objective(spec.sft.model_copy(update={"prefix_loss": type(spec.sft.prefix_loss)()}),
                                trainer.objective.args[0])
    batch = collate([e for e in trainer.align if e.task == "seqrec"][:8], trainer.tok.pad_token_id)
    cpu = torch.device("cpu")

    def losses(model) -> list[float]:
        with torch.no_grad():
            return [float(token_loss(model.eval(), batch, cpu, objective=o)) for o in (None, masked_only, trainer.objective)]

    plain, masked, with_prefix = losses(trainer.model)
    assert masked < plain and with_prefix > masked
    # The output layer run on each level's codes only gives the loss of the full logits.
    positions = (batch.targets != IGNORE_INDEX).any(0).nonzero().squeeze(1)
    with torch.no_grad():
        logits = trainer.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               position_ids=batch.position_ids, use_cache=False).logits[:, positions]
    assert float(masked_only(HeadView(logits), batch.targets[:, positions])) == pytest.approx(masked, rel=1e-5)
    model, _ = load_backbone(trainer.train())
    assert losses(model)[2] < with_prefix - 0.3


def test_logit_adjustment_on_office_is_the_item_prior_split_over_levels(run_dir, tmp_path):
    """With sft.logit_adjust, the additions along each item's SID sum to tau log(1 + its training
    interactions) less tau log of all add-one interactions: the prior the popularity re-ranking
    subtracts after decoding."""
    from indexing.dataset import load_from_spec, split_from_spec
    from indexing.segments import Popularity

    shutil.copytree(run_dir / "index", tmp_path / "index")
    spec = make_spec(tmp_path, loss="trie_ce", logit_adjust=0.5)
    trainer = Trainer(spec)
    trie, bias = trainer.objective.args[0], trainer.objective.keywords["bias"]
    index = SidIndex.load(tmp_path / "index/Office.index.json")
    items = index.items()
    sids = torch.tensor([[trainer.token_ids[t] for t in index.tokens(i)] for i in items])
    # Each level's addition, read off the tables at the item's own prefix node and code, summed.
    added = torch.zeros(len(items))
    for d in range(trie.depth):
        nodes = trie.states_for_prefixes(sids, torch.full((len(items),), d)) - trie.level_start[d]
        added += bias[d][nodes, torch.searchsorted(trie.columns[d], sids[:, d])]
    counts = Popularity.from_train(split_from_spec(spec).train, load_from_spec(spec).num_items).counts[items]
    total = float((torch.as_tensor(counts) + 1).sum())
    expected = 0.5 * (torch.log1p(torch.as_tensor(counts, dtype=torch.float32)) - math.log(total))
    assert torch.allclose(added, expected, atol=1e-4) and len(set(counts.tolist())) > 3
    batch = collate([e for e in trainer.align if e.task == "seqrec"][:8], trainer.tok.pad_token_id)
    plain = sft_objective(spec.sft.model_copy(update={"logit_adjust": 0.0}), trie)
    with torch.no_grad():
        cpu = torch.device("cpu")
        adjusted, unadjusted = (float(token_loss(trainer.model.eval(), batch, cpu, objective=o))
                                for o in (trainer.objective, plain))
    assert math.isfinite(adjusted) and adjusted != pytest.approx(unadjusted)


def test_bfloat16_autocast_changes_the_matmuls_not_the_loss(run_dir):
    trainer = Trainer(make_spec(run_dir))
    batch = collate(trainer.align[:8], trainer.tok.pad_token_id)
    model = trainer.model.eval()
    with torch.no_grad():
        full = float(token_loss(model, batch, torch.device("cpu"), torch.float32))
        mixed = float(token_loss(model, batch, torch.device("cpu"), torch.bfloat16))
    assert full != mixed and abs(full - mixed) < 0.02 * full
    assert autocast_dtype("float32") == torch.float32 and autocast_dtype("bfloat16") == torch.bfloat16
    assert trainer.amp_dtype == torch.float32  # the default, whatever the CPU multiplies natively


def test_two_ranks_on_ray_share_each_epoch_and_save_one_model(run_dir, ray_cluster, tmp_path):
    shutil.copytree(run_dir / "index", tmp_path / "index")
    single = Trainer(make_spec(tmp_path))
    before = mean_token_loss(single.model, single.tok, single.align)
    # Validated after the last epoch only (eval_every 2 of 2 epochs): every rank validates, rank 0
    # decides, and the model saved is still the last epoch's.
    spec = make_spec(tmp_path, sft_ranks=2, eval_every=2, eval_users=8)
    path = run(spec)
    model, tok = load_backbone(path)
    assert mean_token_loss(model, tok, single.align) < before - 0.5
    summary = json.loads((tmp_path / "sft/train_summary.json").read_text())
    assert summary["ranks"] == 2 and summary["selection"]["epoch"] == 1
    assert summary["micro_steps"] == sum(len(single._epoch_batches(e)[0]) // 2 for e in range(spec.sft.epochs))


def _stop_training_ranks(stopped: list, count: int = 1) -> None:
    """SIGSTOP `count` of the two ranks as soon as both run `train`: alive to Ray, silent to their
    peer and to the driver. Appends (each pid, the monotonic time of its stop)."""
    import os
    import signal

    import psutil

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ranks = sorted(p.pid for p in psutil.process_iter(["cmdline"])
                       if (p.info["cmdline"] or [""])[0].startswith("ray::SftRank.train"))
        if len(ranks) == 2:
            for pid in ranks[-count:]:
                os.kill(pid, signal.SIGSTOP)
                stopped.append((pid, time.monotonic()))
            return
        time.sleep(0.2)


@pytest.mark.parametrize("frozen", [1, 2])
def test_a_hung_rank_ends_the_run_instead_of_stalling_it(run_dir, ray_cluster, tmp_path, frozen):
    """One rank frozen: the live one times out in its collective, or (frozen mid all-reduce, where
    gloo's timeout does not hold) the driver's health call finds the frozen one silent. Both frozen:
    no collective can time out, only the health call ends the run. Either way the driver stops every
    rank at the first failure instead of waiting on a hung one for good."""
    import threading

    from sft.distributed import SftRankFailed

    shutil.copytree(run_dir / "index", tmp_path / "index")
    spec = make_spec(tmp_path, sft_ranks=2)
    spec.cluster.sft.collective_timeout_s = 10
    stopped: list[tuple[int, float]] = []
    stopper = threading.Thread(target=_stop_training_ranks, args=(stopped, frozen), daemon=True)
    stopper.start()
    match = "did not answer for 10s" if frozen == 2 else "SFT rank [01] (failed|did not answer)"
    with pytest.raises(SftRankFailed, match=f"{match}.*; every rank was stopped") as err:
        run(spec)
    # Timed from the stop: what comes before it (starting the actors) stretches with the machine's load
    # and is not the wait this guards against.
    assert len(stopped) == frozen and err.value.exit_code == 4 and time.monotonic() - stopped[0][1] < 240


def test_validation_every_epoch_logs_and_saves_the_best_epoch(run_dir, tmp_path):
    from indexing.dataset import split_from_spec
    from sft.validation import Validator, validation_sample

    shutil.copytree(run_dir / "index", tmp_path / "index")
    spec = make_spec(tmp_path, eval_every=1, eval_users=30, autocast="float32", lr=1e-2)
    path = Trainer(spec).train()
    records = [json.loads(line) for line in (tmp_path / "sft/metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if "valid_ndcg@10" in r]
    assert [r["epoch"] for r in valid] == [0, 1]
    assert all({"valid_recall@10", "valid_ndcg@10", "valid_recall@1"} <= set(r) and r["valid_users"] == 30
               for r in valid)
    selection = json.loads((tmp_path / "sft/train_summary.json").read_text())["selection"]
    scores = [r["valid_ndcg@10"] for r in valid]
    assert selection["epoch"] == scores.index(max(scores)) and selection["metric"] == "ndcg@10"
    # The saved folder scores what was logged for the chosen epoch, on the same users.
    model, tok = load_backbone(path)
    examples = validation_sample(split_from_spec(spec).valid, 30)
    again = Validator(tok, SidIndex.load(tmp_path / "index/Office.index.json"), examples, spec.eval.ks,
                      model.config.vocab_size).score(model, torch.device("cpu"))
    logged = {k[len("valid_"):]: v for k, v in valid[selection["epoch"]].items() if k.startswith("valid_") and "@" in k}
    assert selection["valid"] == logged and again == pytest.approx(logged), (again, logged)


def test_the_best_validated_average_is_saved_not_the_last(run_dir, tmp_path, monkeypatch):
    """Scripted validation scores (best at epoch 1 of 3) on a real training run with a weight
    average: what was validated is the average, and the saved model holds epoch 1's."""
    from sft.validation import Validator

    validated = []

    def scripted(self, model, device, amp_dtype=torch.float32):
        params = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        assert all(torch.equal(p, avg) for p, avg in zip(params, trainer.average.shadow))
        validated.append(dict((n, p.detach().clone()) for n, p in model.named_parameters()))
        value = (0.2, 0.5, 0.1)[len(validated) - 1]
        return {"recall@1": value, "recall@5": value, "recall@10": value, "ndcg@5": value, "ndcg@10": value}

    monkeypatch.setattr(Validator, "score", scripted)
    shutil.copytree(run_dir / "index", tmp_path / "index")
    trainer = Trainer(make_spec(tmp_path, epochs=3, eval_every=1, eval_users=5, weight_average=0.5))
    saved = dict(load_backbone(trainer.train())[0].named_parameters())
    assert len(validated) == 3
    assert all(torch.equal(saved[n], validated[1][n]) for n in saved)
    assert not all(torch.equal(saved[n], validated[2][n]) for n in saved)
    summary = json.loads((tmp_path / "sft/train_summary.json").read_text())
    assert summary["selection"]["epoch"] == 1 and summary["selection"]["valid"]["ndcg@10"] == 0.5


class Crash(Exception):
    """Stands for the process dying just after a checkpoint was written."""


def test_a_run_resumed_after_an_epoch_ends_as_the_uninterrupted_run(run_dir, tmp_path, monkeypatch):
    """Dropout, a weight average and per-epoch validation: the state a resume must carry besides the
    engine's (RNG, average, best epoch so far). Stopped after epoch 1 of 3 and resumed, the run logs the
    same losses and scores and saves the same weights, bit for bit, as one never stopped."""
    from cluster.checkpoint import SpecChanged
    from sft.epoch_checkpoints import EpochCheckpoints

    sft = {"epochs": 3, "dropout": 0.1, "weight_average": 0.5, "eval_every": 1, "eval_users": 8}
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    for folder in (whole, parts):
        shutil.copytree(run_dir / "index", folder / "index")
    run(make_spec(whole, **sft))

    save = EpochCheckpoints.save

    def crash_after_the_first(self, engine, state):
        save(self, engine, state)
        if state["epochs"] == 1:
            raise Crash

    monkeypatch.setattr(EpochCheckpoints, "save", crash_after_the_first)
    with pytest.raises(Crash):
        run(make_spec(parts, **sft))
    monkeypatch.undo()
    with pytest.raises(SpecChanged):  # the resumed run must be the same run
        run(make_spec(parts, **{**sft, "lr": 1e-2}), resume=True)
    run(make_spec(parts, **sft), resume=True)

    def records(folder):
        timing = ("tokens_per_s", "supervised_tokens_per_s", "valid_secs")
        return [{k: v for k, v in json.loads(line).items() if k not in timing}
                for line in (folder / "sft/metrics.jsonl").read_text().splitlines()]

    assert records(parts) == records(whole) and any("valid_ndcg@10" in r for r in records(whole))
    summary = [json.loads((f / "sft/train_summary.json").read_text()) for f in (whole, parts)]
    assert summary[0]["selection"] == summary[1]["selection"] and summary[0]["micro_steps"] == summary[1]["micro_steps"]
    weights = [load_backbone(f / "sft/model")[0].state_dict() for f in (whole, parts)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # checkpoint.keep (2): the last two epochs' checkpoints stay.
    assert sorted(p.name for p in (parts / "sft/checkpoints").glob("step-*")) == ["step-0000002", "step-0000003"]


def test_retrieved_items_in_training_and_validation_prompts(run_dir, tmp_path):
    from cluster.errors import MissingArtefact
    from indexing.collaborative import collaborative_vectors
    from indexing.dataset import load_from_spec, split_from_spec
    from indexing.neighbours import write_related

    shutil.copytree(run_dir / "index", tmp_path / "index")
    spec = make_spec(tmp_path, epochs=1, eval_every=1, eval_users=10, retrieved_items=2)
    with pytest.raises(MissingArtefact, match="an imported index .* has no text embeddings"):
        Trainer(spec)
    ds = load_from_spec(spec)
    write_related(spec.layout.related_items, collaborative_vectors(split_from_spec(spec, ds).train, ds.num_items, 16, 3))
    trainer = Trainer(spec)
    line = "Similar to the last: "
    seqrec = [trainer.tok.decode(ex.input_ids) for ex in trainer.align if ex.task == "seqrec"]
    assert seqrec and all(line in text for text in seqrec)
    assert all(line in trainer.tok.decode(ids) for ids in trainer.validator.prompts.prompt_ids)
    assert trainer.train().exists()
