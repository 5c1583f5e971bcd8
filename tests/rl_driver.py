"""`gream rl` as a user runs it: a subprocess with a Ray of its own, its console in a file."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from gream.run_state import read_jsonl
from tests.rl_fixtures import REPO

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
            time.sleep(0.1)
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

    def crash(self) -> None:
        """SIGKILL the driver, as a crash or an OOM killer would; then clear the Ray it leaves behind so
        that a run started next does not share the machine with it."""
        family = psutil.Process(self.proc.pid).children(recursive=True)
        self.kill()
        _, alive = psutil.wait_procs(family, timeout=30)
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass


def last_step(spec) -> int | None:
    rows = read_jsonl(spec.layout.metrics("rl"))  # live file: a torn last line is skipped
    return rows[-1]["step"] if rows else None


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


