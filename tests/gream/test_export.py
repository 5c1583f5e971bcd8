"""`gream export`: from a real DeepSpeed ZeRO-3 checkpoint of two learner ranks to a Hugging Face
folder that transformers loads with the learner's exact weights and logits."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from cluster.checkpoint import BestRule, CheckpointManager
from gream.cli import main
from gream.export import EXPORT_MARKER, ExportError, export, parse_step
from rl_system.learner.batching import completion_logits, pack
from rl_system.learner.config import LearnerConfig
from rl_system.learner.group import LearnerGroup
from rl_system.losses import token_logprobs
from rl_system.messages import TrainBatch
from rl_system.rollout.constraint import ConstraintTable


def sid_batch(policy, tokenizer) -> TrainBatch:
    """Two prompts, three completions that are real SIDs of the index."""
    vocab = tokenizer.get_vocab()
    sids = [[vocab[t] for t in policy.index.tokens(item)] for item in policy.index.items()[:3]]
    prompt = tokenizer("history: pens, paper", add_special_tokens=False)["input_ids"]
    return TrainBatch(prompt_ids=[prompt, prompt, prompt[1:]], completion_ids=sids, advantages=[1.0, -1.0, 0.5])


def local_logprobs(model, batch: TrainBatch) -> list[list[float]]:
    with torch.no_grad():
        packed = pack(batch, torch.device("cpu"))
        logp = token_logprobs(completion_logits(model, packed), packed.targets)
    return [logp[i, :len(c)].tolist() for i, c in enumerate(batch.completion_ids)]


@pytest.fixture(scope="module")
def trained_run(tiny_policy, ray_cluster, tmp_path_factory):
    """A run folder as the stages leave it: index, sft/model, and RL checkpoints of steps 1 and 2
    written by a ZeRO-3 learner group of two ranks, step 1 the best by reward; returns (run, batch,
    per-step learner results)."""
    from transformers import AutoTokenizer

    run = tmp_path_factory.mktemp("export-run")
    tiny_policy.index.save(run / "index" / "Office.index.json")
    shutil.copytree(tiny_policy.model_dir, run / "sft" / "model")
    tokenizer = AutoTokenizer.from_pretrained(run / "sft" / "model")
    batch = sid_batch(tiny_policy, tokenizer)
    ckpts = CheckpointManager(run / "rl" / "checkpoints", keep=2, best=BestRule("reward/mean"))
    ckpts.open_run(resume=False)
    cfg = LearnerConfig(model_path=str(run / "sft" / "model"), device="cpu", lr=1e-2, zero_stage=3,
                        micro_batch_size=2)
    group = LearnerGroup(cfg, world_size=2)
    learned = {}
    try:
        for step in (1, 2):
            group.train_step(batch)
            ckpts.save(step, lambda folder: group.save_checkpoint(folder / "learner", {"step": step}),
                       {"weight_version": step, "spec_hash": "test", "metrics": {"reward/mean": 1.0 / step}})
            learned[step] = {"logprobs": group.logprobs(batch), "params": dict(group.named_parameters_for_push())}
    finally:
        group.shutdown()
    return run, batch, learned


def test_export_rl_step_matches_the_learner(trained_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, batch, learned = trained_run
    out = export(run, 1, tmp_path / "step1")  # not the latest: the export must take step 1's state

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    params = dict(model.named_parameters())
    assert set(params) == set(learned[1]["params"])
    for name, tensor in learned[1]["params"].items():
        torch.testing.assert_close(params[name], tensor, rtol=0, atol=0, msg=name)
    exported = local_logprobs(model, batch)
    for got, want, later in zip(exported, learned[1]["logprobs"], learned[2]["logprobs"]):
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert not np.allclose(got, later, atol=1e-4)  # step 2 moved on; the export is step 1
    sft_model = AutoModelForCausalLM.from_pretrained(run / "sft" / "model")
    assert not torch.equal(sft_model.lm_head.weight, model.lm_head.weight)  # RL weights, not the SFT ones

    tokenizer = AutoTokenizer.from_pretrained(out)
    original = AutoTokenizer.from_pretrained(run / "sft" / "model")
    assert tokenizer.get_vocab() == original.get_vocab()
    sid = "".join(json.loads((out / "Office.index.json").read_text())["0"])
    assert tokenizer.convert_ids_to_tokens(tokenizer(sid, add_special_tokens=False)["input_ids"]) == \
        json.loads((run / "index" / "Office.index.json").read_text())["0"]  # one token per SID level
    from indexing.sid import SidIndex

    table = ConstraintTable.load(out / "sid_constraint.json")
    assert table == ConstraintTable.from_index(SidIndex.load(run / "index" / "Office.index.json"), original)
    assert (out / "generation_config.json").exists()
    marker = json.loads((out / EXPORT_MARKER).read_text())
    assert marker["source"] == "rl" and marker["step"] == 1 and marker["weight_version"] == 1
    assert not list(tmp_path.glob(".step1.tmp-*"))


def test_export_cli_sft_and_errors(trained_run, tmp_path, capsys):
    from safetensors.torch import load_file

    run, _, _ = trained_run
    assert main(["export", str(run), "--step", "sft", str(tmp_path / "sft")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "sft")
    sft = run / "sft" / "model" / "model.safetensors"
    exported = load_file(tmp_path / "sft" / "model.safetensors")
    assert all(torch.equal(t, exported[k]) for k, t in load_file(sft).items())
    assert json.loads((tmp_path / "sft" / EXPORT_MARKER).read_text())["source"] == "sft"
    assert (tmp_path / "sft" / "sid_constraint.json").exists() and (tmp_path / "sft" / "Office.index.json").exists()

    with pytest.raises(ExportError, match="no complete checkpoint for step 7; complete checkpoints: 1, 2"):
        export(run, 7, tmp_path / "x")
    with pytest.raises(ExportError, match="exists and is not empty"):
        export(run, 1, tmp_path / "sft")
    assert main(["export", str(run), "--step", "last", str(tmp_path / "y")]) == 2
    assert "--step must be a checkpoint step number, 'best' or 'sft', got 'last'" in capsys.readouterr().err
    assert parse_step("12") == 12 and parse_step("sft") == "sft" and parse_step("best") == "best"


def test_export_best_is_the_best_checkpoint_not_the_latest(trained_run, tmp_path):
    from safetensors.torch import load_file

    run, _, learned = trained_run
    assert main(["export", str(run), "--step", "best", str(tmp_path / "best")]) == 0
    marker = json.loads((tmp_path / "best" / EXPORT_MARKER).read_text())
    assert marker["step"] == 1 and marker["metrics"] == {"reward/mean": 1.0}
    exported = load_file(tmp_path / "best" / "model.safetensors")
    assert exported and set(exported) <= set(learned[1]["params"])  # a tied output matrix is stored once
    for name, tensor in exported.items():
        torch.testing.assert_close(tensor, learned[1]["params"][name], rtol=0, atol=0, msg=name)

    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    (broken / "rl" / "checkpoints" / "best.json").unlink()
    with pytest.raises(ExportError, match="best.json: no best checkpoint recorded"):
        export(broken, "best", tmp_path / "out")


def test_export_refuses_a_truncated_checkpoint(trained_run, tmp_path):
    run, _, _ = trained_run
    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    (broken / "rl" / "checkpoints" / "step-0000002" / "manifest.json").unlink()  # killed before the rename
    with pytest.raises(ExportError, match="no complete checkpoint for step 2; complete checkpoints: 1"):
        export(broken, 2, tmp_path / "out")


def test_export_refuses_a_checkpoint_whose_hashes_differ(tmp_path):
    from gream.export import find_checkpoint

    ckpts = CheckpointManager(tmp_path / "rl" / "checkpoints", keep=2)
    ckpts.open_run(resume=False)
    path = ckpts.save(1, lambda folder: (folder / "shard.pt").write_bytes(bytes(range(256))), {})
    assert find_checkpoint(tmp_path, 1).path == path
    (path / "shard.pt").write_bytes(bytes(reversed(range(256))))  # same size, other bytes: bit rot
    with pytest.raises(ExportError, match="shard.pt does not match the size and sha256 in the manifest; the "
                                          "checkpoint is damaged, export another step"):
        find_checkpoint(tmp_path, 1)
