"""Run-time control of a running job through its run directory.

`gream scale RUN --rollout N` writes `rl/control.json`; the driver reads it between steps and
resizes the rollout pool. The driver writes `rl/status.json` after every step for `gream status`
and the dashboard. Files (not sockets) because they work the same for a local run, a Ray job and a
KubeRay pod with the run directory on shared storage.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

from cluster.errors import BadRequest, MissingArtefact
from cluster.logs import fields
from cluster.run_layout import RunLayout

log = logging.getLogger(__name__)


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
    """Returns a new requested pool size once per request. Each request's file differs from the one
    before (`requested` is its time), and the file the driver found at start is an earlier run's."""

    def __init__(self, run_dir: Path):
        self.path = control_path(run_dir)
        self._last = self._read()

    def _read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except OSError:
            return None

    def pending_scale(self) -> int | None:
        """The size a new request asks for; None when there is none, or when the file is not a request
        (a warning names the file, the value and what was expected, once per content): a hand-edited
        control file must not end the job."""
        content = self._read()
        if content is None or content == self._last:
            return None
        self._last = content
        try:
            return _requested_size(self.path, content)
        except BadRequest as exc:
            log.warning("scale request ignored", extra=fields(reason=str(exc)))
            return None


def _requested_size(path: Path, content: bytes) -> int:
    try:
        request = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"{path}: not UTF-8 JSON ({exc}); expected {{\"rollout_workers\": N}}") from None
    if not isinstance(request, dict):
        raise BadRequest(f"{path}: holds {request!r}; expected a JSON object {{\"rollout_workers\": N}}")
    size = request.get("rollout_workers")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise BadRequest(f"{path}: rollout_workers is {size!r}; expected an integer >= 1")
    return size


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
