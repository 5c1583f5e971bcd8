"""Per-step metrics: one JSON object per line in `metrics.jsonl`, mirrored to TensorBoard and,
when `logging.wandb_project` is set, to Weights & Biases.

The JSONL file is the contract scripts and the dashboard read; it is appended and flushed every
step so a crash loses at most the step in flight. Lists (histograms) go to TensorBoard as
histograms and stay lists in JSON.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from cluster.errors import GreamError
from cluster.logs import fields
from cluster.run_layout import METRICS_FILE

log = logging.getLogger(__name__)


class MetricsLogError(GreamError):
    """A metrics sink that cannot be set up."""


def start_wandb(project: str, name: str, folder: Path):
    """A W&B run (wandb is optional: not in the lock; WANDB_MODE=offline works without a network)."""
    try:
        import wandb
    except ImportError as exc:
        raise MetricsLogError(f"logging.wandb_project is {project!r} but the wandb package is not installed; "
                              "install it into .venv (.venv/bin/pip install wandb) or unset the key") from exc
    return wandb.init(project=project, name=name, dir=str(folder), resume="allow", id=f"{project}-{name}")


class MetricsLog:
    def __init__(self, folder: Path, tensorboard: bool = True, resume_from_step: int = 0,
                 wandb_project: str | None = None):
        """Records after `resume_from_step` are dropped: 0, a fresh run, starts an empty file rather
        than appending to a previous run's curve."""
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / METRICS_FILE
        self._truncate_after(resume_from_step)
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(folder / "tensorboard"))
        # One W&B run per stage folder, e.g. "demo-rl"; a resumed stage continues the same run.
        name = f"{folder.parent.name}-{folder.name}"
        self._wandb = start_wandb(wandb_project, name, folder) if wandb_project else None

    def _truncate_after(self, step: int) -> None:
        # On resume, steps after the checkpoint are re-run; keep one record per step.
        # A fresh run (step 0) keeps nothing: its step-0 record (validation before training) is new too.
        records, torn = read_records(self.path) if step else ([], False)
        if torn:
            log.warning("skipping the half-written last line of the metrics log (the run stopped mid-write)",
                        extra=fields(path=str(self.path)))
        kept = [r for r in records if r["step"] <= step]
        if self.path.exists():
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, **metrics}
        self._file.write(json.dumps(record, default=_jsonable) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) for v in value):
                    import numpy as np

                    # A list is a histogram over its index (e.g. LCP length 0..H): expand to samples.
                    counts = np.asarray(value, dtype=float)
                    if counts.sum() > 0 and np.allclose(counts, counts.round()):
                        self._tb.add_histogram(key, np.repeat(np.arange(len(counts)), counts.astype(int)), step)
                elif isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def read_records(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """The complete records of a metrics file, and whether its last line was torn (a writer
    mid-append, or stopped in one) and skipped; any other line that is not a record is an error."""
    if not path.exists():
        return [], False
    records = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                return records, True
            raise MetricsLogError(f"{path}: line {number} is not JSON ({exc.msg}); expected one object per step") from exc
        if not isinstance(record, dict) or "step" not in record:
            raise MetricsLogError(f"{path}: line {number} is not an object with a 'step' key")
        records.append(record)
    return records, False


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return read_records(path)[0]
