"""Run-time control of a running job through its run directory.

`gream scale RUN --rollout N` writes `rl/control.json`; the driver reads it between steps and
resizes the rollout pool. The driver writes `rl/status.json` after every step for `gream status`
and the dashboard. Files (not sockets) because they work the same for a local run, a Ray job and a
KubeRay pod with the run directory on shared storage.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from cluster.errors import BadRequest, MissingArtefact
from cluster.run_layout import RunLayout


def control_path(run_dir: Path) -> Path:
    return RunLayout(run_dir).control


def status_path(run_dir: Path) -> Path:
    return RunLayout(run_dir).status


def _atomic_write(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload))
    tmp.replace(path)


def request_scale(run_dir: Path, rollout_workers: int) -> Path:
    if rollout_workers < 1:
        raise BadRequest(f"--rollout must be >= 1, got {rollout_workers}")
    if not RunLayout(run_dir).stage("rl").is_dir():
        raise MissingArtefact(f"{run_dir}: no rl/ folder; is this the run_dir of a job whose RL stage has started?")
    path = control_path(run_dir)
    _atomic_write(path, {"rollout_workers": rollout_workers, "requested": time.time()})
    return path


class ControlWatcher:
    """Returns a new requested pool size once per request (compared by request time)."""

    def __init__(self, run_dir: Path):
        self.path = control_path(run_dir)
        self.seen = self._requested() or 0.0

    def _requested(self) -> float | None:
        try:
            return float(json.loads(self.path.read_text())["requested"])
        except (OSError, ValueError, KeyError):
            return None

    def pending_scale(self) -> int | None:
        requested = self._requested()
        if requested is None or requested <= self.seen:
            return None
        self.seen = requested
        return int(json.loads(self.path.read_text())["rollout_workers"])


def write_status(run_dir: Path, step: int, versions: list[int | None], restarts: int) -> None:
    """`versions`: each rollout worker's weight version, None for one that did not answer (dead)."""
    _atomic_write(status_path(run_dir), {
        "state": "running", "step": step, "updated": time.time(), "restarts": restarts,
        "workers": [{"slot": i, "weight_version": v, "alive": v is not None} for i, v in enumerate(versions)]})


def write_end(run_dir: Path, state: str, error: str | None = None) -> None:
    """The driver's last word in status.json: "finished", "stopped" or "failed" (with the error's
    type), so a reader tells an ended job from one whose driver died without a word (stale). Never
    raises OSError: it runs while the job ends, whose own error and exit code matter more."""
    try:
        status = json.loads(status_path(run_dir).read_text())
    except (OSError, ValueError):
        status = {}
    if not isinstance(status, dict):
        status = {}
    with contextlib.suppress(OSError):
        _atomic_write(status_path(run_dir), {**status, "state": state, "error": error, "updated": time.time()})
