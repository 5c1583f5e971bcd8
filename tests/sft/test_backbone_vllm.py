"""vLLM loads the folders this project writes (embedded tiny Qwen3 with SID tokens, imported SmolLM2),
tokenizes prompts exactly like transformers and picks the same greedy next token.

vLLM binds the threads of the process that runs its CPU engine, so the engines run in a subprocess: this file doubles as that
script (see the `__main__` block), which keeps the check to one interpreter start for both models.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cluster.spec import JobSpec
from indexing.sid import SidIndex
from sft.backbone import add_sid_tokens, build_embedded
from sft.hf_folder import load_backbone, save_backbone
from sft.import_smollm2 import cached_smollm2
from sft.prompts import render_seqrec_prompt

pytestmark = pytest.mark.heavy  # starts DeepSpeed, vLLM or a training run

REPO = Path(__file__).resolve().parents[2]
OFFICE = REPO / "data/office"


def probe_with_vllm(jobs: dict[str, list[str]]) -> dict[str, list[dict]]:
    # The engine in the probe's own process, as gream runs one on CPU (rl_system/rollout/engine.py).
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    proc = subprocess.run([sys.executable, __file__, json.dumps(jobs)], capture_output=True, text=True, env=env,
                          timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("PROBE"):])


@torch.no_grad()
def probe_with_transformers(path: str, prompts: list[str]) -> list[dict]:
    model, tok = load_backbone(path)
    out = []
    for prompt in prompts:
        ids = tok(prompt)["input_ids"]
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        out.append({"prompt_ids": ids, "next": int(logits.argmax())})
    return out


@pytest.mark.slow
def test_transformers_and_vllm_agree(tmp_path):
    spec = JobSpec(name="v", run_dir=str(tmp_path), data={"path": str(OFFICE)},
                   model={"hidden_size": 128, "num_layers": 2, "num_heads": 2, "bpe_vocab": 500})
    build_embedded(spec, tmp_path / "base")
    model, tok = load_backbone(tmp_path / "base")
    index = SidIndex({0: (12, 200, 7), 1: (3, 4, 5)})
    add_sid_tokens(model, tok, index.vocab())
    save_backbone(model, tok, tmp_path / "tiny")
    smol = cached_smollm2()  # the session's cache (tests/conftest.py): imported once

    tiny_prompts = [render_seqrec_prompt(tok, [index.text(0), index.text(1)]),
                    render_seqrec_prompt(tok, [index.text(1)], reasoning=True)]
    _, smol_tok = load_backbone(smol)
    smol_prompts = [render_seqrec_prompt(smol_tok, ["<a_1><b_2>"]),
                    smol_tok.apply_chat_template([{"role": "user", "content": "Name a primary colour."}],
                                                 tokenize=False, add_generation_prompt=True)]
    jobs = {str(tmp_path / "tiny"): tiny_prompts, str(smol): smol_prompts}
    got = probe_with_vllm(jobs)
    for path, prompts in jobs.items():
        assert got[path] == probe_with_transformers(path, prompts), path
    # The SID tokens reach vLLM as single ids.
    sid_ids = tok(index.text(0), add_special_tokens=False)["input_ids"]
    assert len(sid_ids) == 3
    ids = got[str(tmp_path / "tiny")][0]["prompt_ids"]
    assert any(ids[i:i + 3] == sid_ids for i in range(len(ids)))


if __name__ == "__main__":
    from vllm import LLM, SamplingParams

    results = {}
    for model_dir, prompts in json.loads(sys.argv[1]).items():
        # Eager mode: compiling the graph costs minutes on a small CPU and tests nothing here.
        llm = LLM(model=model_dir, dtype="float32", max_model_len=512, seed=0, enforce_eager=True,
                  compilation_config={"mode": 0}, distributed_executor_backend="uni")
        outs = llm.generate(prompts, SamplingParams(max_tokens=1, temperature=0.0))
        results[model_dir] = [{"prompt_ids": list(o.prompt_token_ids), "next": o.outputs[0].token_ids[0]} for o in outs]
        del llm
    print("PROBE" + json.dumps(results), flush=True)
