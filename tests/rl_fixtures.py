"""Spec and stage inputs shared by the RL driver and rollout-pool tests."""
from __future__ import annotations

import shutil
from pathlib import Path

from cluster.spec import JobSpec
from indexing.build import index_path

REPO = Path(__file__).resolve().parents[1]
REQUIRED_KEYS = {"step", "reward/mean", "reward/std", "hit_rate", "dropped/all_miss", "dropped/all_hit",
                 "dropped/constant", "kl", "entropy", "weight_version", "time/rollout", "time/reward",
                 "time/train", "time/push", "kept_groups", "informative_groups"}


def rl_test_spec(root: Path, **rl) -> JobSpec:
    return JobSpec(
        name="rl-test", run_dir=str(root), data={"path": str(REPO / "data/office")},
        index={"import_file": str(REPO / "data/office/Office.unitok5.index.json")},
        model={"hidden_size": 64, "num_layers": 2, "num_heads": 1, "bpe_vocab": 400},
        rl={"steps": 3, "group_size": 4, "prompts_per_step": 4, "max_resample_rounds": 1, "micro_batch_size": 8,
            "lr": 1e-3, **rl},
        cluster={"device": "cpu", "rollout": {"num_workers": 2, "kv_cache_gib": 1}},
        checkpoint={"every": 2, "keep": 2})


def stage_inputs(spec: JobSpec, tiny_policy) -> None:
    """The artefacts the index and sft stages would leave: the SID index and a policy folder."""
    tiny_policy.index.save(index_path(spec))
    shutil.copytree(tiny_policy.model_dir, spec.layout.model("sft"))


TIMED_KEYS = ("time/", "push/seconds", "throughput/")  # wall-clock figures: all that two equal runs may differ in


def untimed(row: dict) -> dict:
    """A metrics row without its wall-clock figures: what an exact re-run must repeat."""
    return {k: v for k, v in row.items() if not k.startswith(TIMED_KEYS)}
