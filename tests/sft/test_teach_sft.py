"""`gream teach` then `gream sft` on Office: a real local HTTP teacher (tests/chat_server.py, replies
from tests/teacher_replies.py) writes the reasoning records and preference summaries, and a real
DeepSpeed run on the embedded backbone trains seqrec + preference with the reasoning curriculum."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gream.cli import main
from indexing.build import run as build_index
from tests.chat_server import ChatServer
from tests.teacher_replies import is_copy, reply

pytestmark = pytest.mark.heavy  # starts DeepSpeed, vLLM or a training run

REPO = Path(__file__).resolve().parents[2]
OFFICE = REPO / "data/office"
LIMIT = 16  # sft.max_train_examples: the cap of every alignment task


@pytest.fixture
def server():
    with ChatServer(reply) as s:
        yield s


def write_spec(root: Path, url: str) -> Path:
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump({
        "name": "teach-sft", "run_dir": str(root / "run"), "stages": ["index", "teach", "sft"],
        "data": {"path": str(OFFICE)}, "index": {"import_file": str(OFFICE / "Office.unitok5.index.json")},
        "model": {"hidden_size": 64, "num_layers": 1, "num_heads": 1, "bpe_vocab": 400},
        "sft": {"epochs": 2, "batch_size": 8, "lr": 3e-3, "max_train_examples": LIMIT, "tasks": ["seqrec", "preference"],
                "reasoning": {"enabled": True, "endpoint": url, "teacher": "chat-teacher", "max_examples": 24},
                "preference": {"max_users": 24, "history_items": 10}},
        "cluster": {"device": "cpu"}, "logging": {"tensorboard": False}}))
    return path


def test_teach_then_sft_trains_preference_and_reasoning_batches(server, tmp_path):
    from cluster.spec import load_spec

    path = write_spec(tmp_path, server.url)
    spec = load_spec(path)
    build_index(spec)
    assert main(["teach", str(path)]) == 0
    run = tmp_path / "run"
    reasoning = json.loads((run / "teach/reasoning/report.json").read_text())
    preference = json.loads((run / "teach/preference/report.json").read_text())
    prompts = server.prompts
    pref_prompts = [p for p in prompts if "<answer>" not in p]
    assert len(prompts) == 48 and len(pref_prompts) == 24
    assert (reasoning["examples"], reasoning["asked"], reasoning["kept"], reasoning["dropped"]) == (24, 24, 24, 0)
    copies = sum(map(is_copy, pref_prompts))
    assert 0 < copies < 24  # the fixed data exercises both kinds of reply
    assert (preference["examples"], preference["asked"], preference["from_cache"]) == (24, 24, 0)
    assert preference["kept"] == 24 - copies and preference["dropped_by_reason"] == {"copies_prompt": copies}
    rows = [json.loads(line) for line in (run / "teach/preference/summaries.jsonl").read_text().splitlines()]
    assert len(rows) == preference["kept"] and all(len(r["history"]) <= 10 for r in rows)
    assert all(r["summary"].startswith("This shopper keeps a well stocked desk") for r in rows)

    # A re-run asks nothing: every reply comes from the cache.
    assert main(["teach", str(path)]) == 0 and len(server.prompts) == 48
    again = json.loads((run / "teach/preference/report.json").read_text())
    assert (again["asked"], again["from_cache"], again["kept"]) == (0, 24, preference["kept"])

    assert main(["sft", str(path)]) == 0
    summary = json.loads((run / "sft/train_summary.json").read_text())
    assert summary["task_examples"]["preference"] == min(LIMIT, preference["kept"])
    assert summary["task_examples"]["reasoning"] == summary["reason_examples"] > 0
    assert summary["batches"]["reason"] > 0 and summary["batches"]["align"] > 0
    logged = [json.loads(line) for line in (run / "sft/metrics.jsonl").read_text().splitlines()]
    assert any("loss_reason" in r for r in logged) and any("loss_align" in r for r in logged)
