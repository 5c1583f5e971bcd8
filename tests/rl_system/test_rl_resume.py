"""Exact resume, as a user meets it: `gream rl` killed with SIGKILL after a checkpoint and started again
with `--resume` ends where an uninterrupted run with the same seed ends. Both runs, side by side on
the bundled Office data (CPU, fp32): every step's rewards, prompt uids and sampled completions (their
digest) and the learner's figures are equal, and so are the final weights, tensor for tensor.

What makes it hold: each group is sampled from its own seed, a function of (rl.seed, prompt uid)
(rl_system/seeding.py), so the draws depend neither on the engine's history nor on how requests meet
in the engine; the prompt order is a function of (rl.seed, epoch) and the checkpointed cursor; the
learner's optimizer state and RNG are in the checkpoint.
"""
from __future__ import annotations

import pytest

from cluster.checkpoint import CheckpointManager
from cluster.spec import dump_spec
from gream.run_state import read_jsonl
from tests.rl_driver import Driver, last_step
from tests.rl_fixtures import rl_test_spec, stage_inputs, untimed

pytestmark = pytest.mark.heavy  # starts DeepSpeed, vLLM or a training run

STEPS, KILL_AFTER = 5, 1  # a step takes about 0.5 s: four after the kill point leave the 0.1 s poll time
OVERRIDES = ["--set", "cluster.rollout.num_workers=1", "--set", f"checkpoint.every={KILL_AFTER}"]


def _job(tiny_policy, root):
    # Eight prompts of eight samples a step: enough non-zero rewards on the untrained policy that
    # most steps train, so equal weights mean equal updates, not no updates.
    spec = rl_test_spec(root / "run", steps=STEPS, group_size=8, prompts_per_step=8)
    stage_inputs(spec, tiny_policy)
    path = root / "job.yaml"
    path.write_text(dump_spec(spec))
    return spec, path


def _steps(spec) -> list[dict]:
    return [untimed(row) for row in read_jsonl(spec.layout.metrics("rl"))]


def _weights(spec) -> dict:
    from safetensors.torch import load_file

    return load_file(spec.layout.model("rl") / "model.safetensors")


def test_sigkill_after_a_checkpoint_then_resume_repeats_the_uninterrupted_run(tiny_policy, tmp_path):
    whole_spec, whole_path = _job(tiny_policy, tmp_path / "whole")
    cut_spec, cut_path = _job(tiny_policy, tmp_path / "cut")
    ckpts = CheckpointManager(cut_spec.layout.checkpoints, keep=1 << 30)

    whole = Driver(["rl", str(whole_path), *OVERRIDES], tmp_path / "whole.log")
    cut = Driver(["rl", str(cut_path), *OVERRIDES], tmp_path / "cut.log")
    resumed = None
    try:
        cut.wait_for(f"checkpoint of step {KILL_AFTER}",
                     lambda: c if (c := ckpts.latest()) is not None and c.step >= KILL_AFTER else None)
        cut.crash()
        killed_at = last_step(cut_spec)
        assert killed_at < STEPS and not cut_spec.layout.model("rl").exists()  # it did stop mid-run
        resumed = Driver(["rl", str(cut_path), *OVERRIDES, "--resume"], tmp_path / "resumed.log")
        assert whole.exit_code(timeout_s=600) == 0, whole.console()[-4000:]
        assert resumed.exit_code(timeout_s=600) == 0, resumed.console()[-4000:]
    finally:
        for driver in (whole, cut, resumed):
            if driver is not None:
                driver.kill()

    expected, got = _steps(whole_spec), _steps(cut_spec)
    assert [r["step"] for r in expected] == list(range(1, STEPS + 1))
    assert got == expected
    assert sum(r["loss"] is not None for r in expected) >= 2  # updates happened, and were the same
    a, b = _weights(whole_spec), _weights(cut_spec)
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
