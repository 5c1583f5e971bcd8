"""configs/qwen3-4b-beauty.yaml, the GPU recipe, runs: `gream launch` takes it through every stage it
lists (index -> teach -> sft -> rl in reasoning mode with Rollout-Beam rewards -> eval) on CPU, with
`--set` overrides that swap only what this machine lacks: the embedded backbone at the demo's sizes
for Qwen3-4B, the bundled Office set (its ready-made IDs) for Beauty, CPU roles, tiny lengths, and a
real local HTTP teacher (tests/chat_server.py) for the recipe's teacher endpoint. Everything else
(tasks, curriculum, reasoning records and preference summaries, RL mode and reward) is the recipe's."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.spec import load_spec
from tests.chat_server import ChatServer
from tests.teacher_replies import reply

pytestmark = pytest.mark.heavy  # starts DeepSpeed, vLLM or a training run

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "configs/qwen3-4b-beauty.yaml"
OFFICE = REPO / "data/office"

CPU_OVERRIDES = [
    # the demo's embedded backbone and sizes for Qwen3-4B
    "model.backbone=embedded:tiny-qwen3", "model.dtype=float32", "model.hidden_size=128", "model.num_layers=2",
    "model.num_heads=2", "model.bpe_vocab=1280",
    # the bundled Office set, with its ready-made IDs, for Beauty
    f"data.path={OFFICE}", "data.name=Office", f"index.import_file={OFFICE / 'Office.unitok5.index.json'}",
    # tiny lengths
    "sft.epochs=1", "sft.batch_size=8", "sft.grad_accum=1", "sft.max_len=512", "sft.max_train_examples=16",
    "sft.reasoning.max_examples=16", "sft.reasoning.max_tokens=128", "sft.preference.max_users=16",
    "rl.steps=1", "rl.group_size=2", "rl.prompts_per_step=2", "rl.micro_batch_size=4", "rl.max_think_tokens=16",
    "eval.max_users=4", "eval.pass_samples=2",
    # one CPU process per role, a local Ray
    "cluster.device=cpu", "cluster.address=null", "cluster.rollout={num_workers: 1, kv_cache_gib: 1}",
    "cluster.sft={num_ranks: 1}", "cluster.learner={num_ranks: 1}", "cluster.reward={replicas: 1}",
    "logging.tensorboard=false",
]


@pytest.mark.slow
def test_the_gpu_recipe_runs_every_stage_on_cpu(tmp_path):
    with ChatServer(reply) as teacher:
        overrides = [*CPU_OVERRIDES, f"run_dir={tmp_path / 'run'}", f"sft.reasoning.endpoint={teacher.url}"]
        spec = load_spec(RECIPE, overrides)
        # what the test relies on the recipe for
        assert spec.stages == ["index", "teach", "sft", "rl", "eval"]
        assert (spec.rl.mode, spec.rl.reward, spec.sft.reasoning.enabled) == ("reasoning", "beam", True)
        assert "preference" in spec.sft.tasks and spec.sft.reasoning.teacher == "Qwen/Qwen3-32B"
        args = [arg for o in overrides for arg in ("--set", o)]
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, "-m", "gream.cli", "launch", str(RECIPE), *args], capture_output=True,
                              text=True, env=env, cwd=REPO, timeout=900)
        assert proc.returncode == 0, proc.stderr[-6000:]
        asked = len(teacher.prompts)
    run = tmp_path / "run"
    for stage in spec.stages:
        assert (run / stage / "stage.json").exists(), stage
    reports = {k: json.loads((run / "teach" / k / "report.json").read_text()) for k in ("reasoning", "preference")}
    assert asked == reports["reasoning"]["asked"] + reports["preference"]["asked"] == 32
    assert reports["reasoning"]["kept"] == 16 and reports["preference"]["kept"] > 0
    summary = json.loads((run / "sft/train_summary.json").read_text())
    assert summary["batches"]["reason"] > 0 and summary["task_examples"]["preference"] > 0
    assert set(spec.sft.tasks) <= set(summary["task_examples"])
    rl_rows = [json.loads(line) for line in (run / "rl/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rl_rows] == [1]
    for stage in ("sft", "rl"):  # reasoning mode: every sampled completion well formed, by construction
        test = json.loads((run / stage / "eval.json").read_text())["test"]
        assert test["users"] == 4 and test["format_ok"] == 1.0 and {"recall@10", "pass@1"} <= set(test)
