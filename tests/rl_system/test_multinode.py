"""Multi-node for real: learner, rollout worker and reward replica on separate Ray nodes, weight
pushes across them, and the job going on after the node holding the rollout worker is removed."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.rl_fixtures import REPO
from tests.rl_system.multinode_job import KILL_AFTER, STEPS, WORKERS

pytestmark = pytest.mark.heavy  # a Ray cluster of its own, a vLLM engine and a DeepSpeed learner


def test_rl_job_across_nodes_survives_losing_the_rollout_node(tiny_policy, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE"}
    job = subprocess.Popen([sys.executable, "-m", "tests.rl_system.multinode_job", str(tmp_path), str(tiny_policy.model_dir)],
                           cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = job.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        job.terminate()  # the job shuts its Ray cluster down on SIGTERM
        output, _ = job.communicate(timeout=120)
    assert job.returncode == 0, output[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert "killer_error" not in result, result["killer_error"]
    assert result["nodes"] == 1 + len(WORKERS)
    # The learner's and the reward replica's markers exist on one node each, the rollout marker on
    # two; one of each held while the job ran puts the three roles on three different nodes.
    assert result["free_before_kill"] == {"learner_node": 0.0, "rollout_node": 1.0, "reward_node": 0.0}
    assert result["killed_after_step"] >= KILL_AFTER
    # Every step ran and pushed its weights, the ones after the loss included, through a replacement.
    assert result["steps"] == list(range(1, STEPS + 1)) and result["weight_versions"] == result["steps"]
    assert result["status"]["restarts"] >= 1
    assert [w["weight_version"] for w in result["status"]["workers"]] == [STEPS]
