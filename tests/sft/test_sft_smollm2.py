"""The SmolLM2-135M path end to end on a small Office slice: import from the offline GGUF package,
add SID tokens, LoRA SFT on DeepSpeed, merged save that transformers reloads."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cluster.spec import JobSpec
from indexing.build import run as build_index
from indexing.sid import SidIndex
from sft.hf_folder import load_backbone
from sft.trainer import Trainer

pytestmark = pytest.mark.heavy  # starts DeepSpeed, vLLM or a training run

REPO = Path(__file__).resolve().parents[2]
OFFICE = REPO / "data/office"


@pytest.mark.slow
def test_smollm2_lora_sft_on_a_slice(tmp_path):
    spec = JobSpec(
        name="smol", run_dir=str(tmp_path), data={"path": str(OFFICE)},
        index={"import_file": str(OFFICE / "Office.unitok5.index.json")},
        model={"backbone": "embedded:smollm2-135m"},
        sft={"epochs": 2, "batch_size": 2, "lr": 1e-3, "max_train_examples": 2, "tasks": ["seqrec", "index2item"],
             "lora": {"enabled": True, "r": 4, "alpha": 8}},
        cluster={"device": "cpu"}, logging={"tensorboard": False})
    build_index(spec)
    trainer = Trainer(spec)
    new_rows = trainer.new_rows
    base_emb = trainer.model.get_input_embeddings().weight[new_rows].detach().clone()
    path = trainer.train()
    model, tok = load_backbone(path)
    assert model.config.model_type == "llama" and model.config.vocab_size % 64 == 0
    index = SidIndex.load(tmp_path / "index/Office.index.json")
    sid = index.text(index.items()[0])
    assert len(tok(sid, add_special_tokens=False)["input_ids"]) == index.depth
    assert not torch.equal(model.get_input_embeddings().weight[new_rows], base_emb)
    assert not any("lora" in k for k in model.state_dict())
