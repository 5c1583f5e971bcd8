"""How a running RL job stops, as its user sees it: `gream rl` in a subprocess, with its own Ray,
a vLLM-CPU rollout worker, a DeepSpeed learner and the reward service, on the bundled Office data.

One run sequence, to keep CI short:
1. `gream rl SPEC`: after step 1, `gream scale RUN --rollout 2` is picked up by the driver loop and
   both workers serve the current weight version; then SIGTERM stops the job with exit code 143
   (128 + 15) after a complete checkpoint of the step it stopped on, and says how to resume.
2. The printed resume command: after its first step the learner rank's process is killed; the job
   stops with exit code 4, names the failure and prints the same resume command.
Each stop leaves its end ("stopped", "failed") in status.json. A second, short run kills the
learner during its set-up: exit 4 too, not a traceback.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cluster.checkpoint import CheckpointManager
from cluster.control import request_scale, status_path
from cluster.spec import dump_spec
from gream.run_state import read_jsonl
from tests.rl_fixtures import REPO, rl_test_spec, stage_inputs

pytestmark = pytest.mark.heavy  # starts DeepSpeed, vLLM or a training run

OVERRIDES = ["--set", "cluster.rollout.num_workers=1", "--set", "checkpoint.every=50"]
STEP_TIMEOUT_S = 300  # Ray + vLLM + DeepSpeed start-up on a busy 2-core CI machine, then one step


class Driver:
    """One `gream` subprocess; its console goes to a file (a pipe could fill up and block it)."""

    def __init__(self, args: list[str], log: Path):
        self.log = log
        # RAY_ADDRESS=local: a Ray of its own, never a cluster someone started on this machine.
        env = {**os.environ, "RAY_ADDRESS": "local", "HF_HUB_OFFLINE": "1"}
        with log.open("w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "gream.cli", *args], cwd=REPO, env=env,
                                         stdout=out, stderr=subprocess.STDOUT)

    def console(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, what: str, probe, timeout_s: float = STEP_TIMEOUT_S):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (found := probe()) is not None:
                return found
            if self.proc.poll() is not None:
                pytest.fail(f"driver exited {self.proc.returncode} before {what}:\n{self.console()[-4000:]}")
            time.sleep(0.5)
        pytest.fail(f"no {what} after {timeout_s}s:\n{self.console()[-4000:]}")

    def exit_code(self, timeout_s: float = 180) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"driver still running {timeout_s}s after it was told to stop:\n{self.console()[-4000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def last_step(spec) -> int | None:
    rows = read_jsonl(spec.layout.metrics("rl"))  # live file: a torn last line is skipped
    return rows[-1]["step"] if rows else None


def scaled_status(spec, workers: int):
    """status.json once it lists `workers` workers, all on the weight version of its step."""
    try:
        status = json.loads(status_path(spec.run_path).read_text())
    except (OSError, ValueError):
        return None
    versions = [w["weight_version"] for w in status["workers"]]
    return status if len(versions) == workers and set(versions) == {status["step"]} else None


def learner_pid(driver: Driver, title: str = "ray::Learner") -> int | None:
    """The learner actor's process: a descendant of this driver (its own Ray) whose title starts
    with `title` (Ray titles it with the method it runs, e.g. ray::Learner.setup)."""
    for child in psutil.Process(driver.proc.pid).children(recursive=True):
        try:
            if " ".join(child.cmdline()).startswith(title):
                return child.pid
        except psutil.Error:
            continue
    return None


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
        second.wait_for("resumed step", lambda: s if (s := last_step(spec)) and s > stopped else None)
        os.kill(second.wait_for("learner process", lambda: learner_pid(second), timeout_s=10), signal.SIGKILL)
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
