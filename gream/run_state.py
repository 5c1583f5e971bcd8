"""A run directory read into one snapshot: what `gream dashboard` serves and `gream status` prints.

Everything here only reads files the stages write (`rl/metrics.jsonl`, `sft/metrics.jsonl`,
`<stage>/eval.json`, `baselines/<name>/eval.json`, `rl/status.json`, `rl/checkpoints/`, `rl/model/`,
`rl/stage.json`), so it is safe to call while a run is writing them: a half-written last line of a
metrics file is left for the next read.
"""
from __future__ import annotations

import json
import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cluster.checkpoint import CheckpointManager
from cluster.errors import GreamError
from cluster.logs import fields
from cluster.metrics_log import MetricsLogError, read_metrics
from cluster.run_layout import EVAL_FILE, RunLayout

log = logging.getLogger(__name__)

EVAL_STAGES = ("sft", "rl")
TIME_PARTS = ("rollout", "reward", "train", "push")
VAL_PREFIX = "val/"  # validation metrics the RL driver logs on some steps (step 0: the SFT model)
# A driver whose status.json is older than this many median step times (and at least the minimum)
# is taken to have stopped: a slow step is not a dead driver, an hour of silence is.
STALE_MIN_S = 120.0
STALE_STEPS = 10


class RunDirError(GreamError):
    """A run folder that cannot be read."""


@dataclass
class Series:
    """Per-step records as columns: `values[key][i]` belongs to `steps[i]` (None where a step lacks it)."""

    steps: list[int] = field(default_factory=list)
    values: dict[str, list[float | None]] = field(default_factory=dict)
    latest: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_records(cls, records: list[dict[str, Any]]) -> "Series":
        keys = list(dict.fromkeys(k for r in records for k, v in r.items() if k != "step" and _is_number(v)))
        return cls(steps=[int(r["step"]) for r in records],
                   values={k: [_finite(r.get(k)) for r in records] for k in keys},
                   latest=records[-1] if records else {})

    def last(self, key: str) -> float | None:
        """The most recent value of `key`, looking back past steps that lack it."""
        for value in reversed(self.values.get(key, [])):
            if value is not None:
                return value
        return None

    def points(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of the steps that report `key`."""
        return [(s, v) for s, v in zip(self.steps, self.values.get(key, [])) if v is not None]


def validation_summary(rl: Series) -> dict[str, dict[str, float]]:
    """Per `val/*` key: the latest value and the best, each with its step. Best is the highest (every
    validation metric is a recall, NDCG or pass rate); on a tie the earliest step."""
    out = {}
    for key in (k for k in rl.values if k.startswith(VAL_PREFIX)):
        points = rl.points(key)
        if points:  # none where every logged value was NaN
            best = max(points, key=lambda p: p[1])
            out[key] = {"step": points[-1][0], "value": points[-1][1], "best_step": best[0], "best_value": best[1]}
    return out


END_STATES = ("finished", "stopped", "failed")  # what the driver writes to status.json as it ends


@dataclass(frozen=True)
class DriverState:
    """What rl/status.json still means. `state` is "running" (the workers' alive flags are current),
    "finished" (the stage ended; the pool is gone), "stopped" (by a signal, after a checkpoint),
    "failed" (`error` names the error's type) or "stale" (no update for `stale_after` seconds: the
    driver died without a word or hangs, and its last alive flags say nothing)."""

    state: str
    updated: float | None
    stale_after: float
    error: str | None = None


def driver_state(status: dict[str, Any], step_times: list[float], finished_at: float | None, now: float) -> DriverState:
    """`finished_at`: when rl/model or rl/stage.json was last written. Either counts only if written
    after the last status update, so a re-run in a folder that holds a previous run's model is not
    taken for finished."""
    updated = status.get("updated") if _is_number(status.get("updated")) else None
    stale_after = max(STALE_MIN_S, STALE_STEPS * statistics.median(step_times)) if step_times else STALE_MIN_S
    if status.get("state") in END_STATES:  # the driver's own word on how it ended
        error = status.get("error")
        return DriverState(status["state"], updated, stale_after, error if isinstance(error, str) else None)
    if finished_at is not None and (updated is None or finished_at >= updated):
        state = "finished"
    elif updated is None or now - updated > stale_after:
        state = "stale"
    else:
        state = "running"
    return DriverState(state, updated, stale_after)


@dataclass
class RunState:
    run_dir: Path
    rl: Series
    sft: Series
    eval: dict[str, dict[str, dict[str, float]]]  # stage or baseline -> split -> metric -> value
    status: dict[str, Any] | None  # rl/status.json as the driver wrote it
    checkpoint: dict[str, Any] | None  # the latest complete checkpoint's step, path and manifest fields
    selection: dict[str, Any] | None  # rl/model/selection.json: the checkpoint rl/model was made from
    finished_at: float | None  # mtime of rl/model's config.json or rl/stage.json, the later one
    read_at: float

    @property
    def driver(self) -> DriverState | None:
        if not isinstance(self.status, dict):
            return None
        return driver_state(self.status, [t for _, t in self.rl.points("time/step")], self.finished_at, self.read_at)

    def to_json(self) -> dict[str, Any]:
        driver = self.driver
        return {
            "run_dir": str(self.run_dir),
            "read_at": self.read_at,
            "rl": {"steps": self.rl.steps, "values": self.rl.values, "latest": _clean(self.rl.latest)},
            "sft": {"steps": self.sft.steps, "values": self.sft.values},
            "eval": _clean(self.eval),
            "status": _clean(self.status),
            "driver": None if driver is None else _clean(asdict(driver)),
            "checkpoint": _clean(self.checkpoint),
            "validation": validation_summary(self.rl),
            "selection": _clean(self.selection),
        }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> float | None:
    # JSON has no NaN/Infinity (browsers reject them); a gap in the line says the same thing.
    if not _is_number(value) or not math.isfinite(value):
        return None
    return value


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete records of a metrics file; a torn last line (the writer mid-append) is skipped."""
    try:
        return read_metrics(path)
    except MetricsLogError as exc:
        raise RunDirError(str(exc)) from exc


def _read_json(path: Path) -> Any:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:  # JSONDecodeError; UnicodeDecodeError where a copy cut a character in two
        # Writers replace these files atomically; a parse failure is a copy in progress, not data.
        log.warning("unreadable JSON, ignored this time", extra=fields(path=str(path)))
        return None


def _latest_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    root = RunLayout(run_dir).checkpoints
    if not root.is_dir():  # CheckpointManager would create it
        return None
    latest = CheckpointManager(root, keep=1 << 30).latest()
    if latest is None:
        return None
    meta = {k: v for k, v in latest.meta.items() if k != "files"}
    return {**meta, "step": latest.step, "path": str(latest.path), "saved_at": latest.path.stat().st_mtime}


def _read_evals(run_dir: Path) -> dict[str, dict[str, dict[str, float]]]:
    """Trained stages first, then baselines (e.g. SASRec) to compare against."""
    baselines = RunLayout(run_dir).baselines
    folders = [run_dir / s for s in EVAL_STAGES] + (sorted(baselines.iterdir()) if baselines.is_dir() else [])
    out = {}
    for folder in folders:
        result = _read_json(folder / EVAL_FILE)
        if not isinstance(result, dict):
            continue
        # A split maps metric names to numbers; other entries (a baseline's "meta") are not results.
        splits = {split: metrics for split, metrics in result.items()
                  if isinstance(metrics, dict) and metrics and all(_is_number(v) for v in metrics.values())}
        if splits:
            out[folder.name] = splits
    return out


def _finished_at(layout: RunLayout) -> float | None:
    # The driver saves rl/model only after its last step; the launcher writes the marker after that.
    times = [p.stat().st_mtime for p in (layout.model("rl") / "config.json", layout.stage_marker("rl")) if p.exists()]
    return max(times, default=None)


def read_run_state(run_dir: str | Path) -> RunState:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory (expected the spec's run_dir, e.g. runs/NAME)")
    layout = RunLayout(run_dir)
    selection = _read_json(layout.selection)
    return RunState(
        run_dir=run_dir,
        rl=Series.from_records(read_jsonl(layout.metrics("rl"))),
        sft=Series.from_records(read_jsonl(layout.metrics("sft"))),
        eval=_read_evals(run_dir),
        status=_read_json(layout.status),
        checkpoint=_latest_checkpoint(run_dir),
        selection=selection if isinstance(selection, dict) else None,
        finished_at=_finished_at(layout),
        read_at=time.time(),
    )


# --- terminal summary ---------------------------------------------------------------------------

def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "unknown time"
    seconds = max(0.0, now - ts)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min ago"
    return f"{seconds / 3600:.1f}h ago"


def format_status(state: RunState) -> str:
    """`gream status RUN`: the dashboard's numbers in a dozen lines."""
    rl, now = state.rl, state.read_at
    lines = [f"run {state.run_dir}"]
    if not rl.steps:
        lines.append("rl: no steps logged yet" + (f" (sft: {len(state.sft.steps)} logged steps, "
                                                    f"loss_align {_fmt(state.sft.last('loss_align'))})"
                                                    if state.sft.steps else ""))
    else:
        lines.append(f"rl step {rl.steps[-1]}  weight version {_fmt(rl.last('weight_version'))}  "
                     f"groups kept {_fmt(rl.last('kept_groups'))}/{_fmt(rl.last('sampled_groups'))}")
        lines.append(f"  reward     {_fmt(rl.last('reward/mean'))} +- {_fmt(rl.last('reward/std'))}   "
                     f"hit rate {_fmt(rl.last('hit_rate'))}")
        lines.append("  dropped    " + "  ".join(f"{k.split('/', 1)[1]} {_fmt(rl.last(k), 3)}"
                                               for k in rl.values if k.startswith("dropped/")))
        lines.append(f"  kl         {_fmt(rl.last('kl'), 6)}   entropy {_fmt(rl.last('entropy'))}   "
                     f"clip {_fmt(rl.last('clip_fraction'))}   grad norm {_fmt(rl.last('grad_norm'))}")
        total = rl.last("time/step")
        parts = "  ".join(f"{p} {_fmt(rl.last(f'time/{p}'), 2)}" for p in TIME_PARTS)
        lines.append(f"  step time  {_fmt(total, 2)}s = {parts}")
        lines.append(f"  throughput {_fmt(rl.last('throughput/rollout_tokens_per_s'), 1)} rollout tokens/s")
        lcp = rl.latest.get("lcp_hist")
        if isinstance(lcp, list) and lcp:
            lines.append("  lcp hist   " + " ".join(f"{i}:{n}" for i, n in enumerate(lcp)))
        for key, val in validation_summary(rl).items():
            lines.append(f"  {key:<14} {_fmt(val['value'])} at step {val['step']}, "
                         f"best {_fmt(val['best_value'])} at step {val['best_step']}")
    for stage, splits in state.eval.items():
        for split, metrics in splits.items():
            shown = {k: v for k, v in metrics.items() if k.startswith(("pass@", "recall@", "ndcg@"))}
            lines.append(f"eval {stage}/{split}: " + "  ".join(f"{k} {_fmt(v)}" for k, v in shown.items()))
    status, driver = state.status, state.driver
    if driver is None:
        lines.append("workers: no status yet")
    else:
        workers = status.get("workers", [])
        at_step = f"at step {status.get('step', '-')}"
        if driver.state == "running":
            alive = sum(bool(w.get("alive")) for w in workers)
            lines.append(f"workers: {alive}/{len(workers)} alive {at_step} (updated {_ago(driver.updated, now)})")
        elif driver.state == "finished":
            lines.append(f"workers: finished {at_step} (last update {_ago(driver.updated, now)})")
        elif driver.state in END_STATES:
            why = f" ({driver.error})" if driver.error else ""
            lines.append(f"workers: driver {driver.state}{why} {at_step} ({_ago(driver.updated, now)})")
        else:
            since = "unknown time" if driver.updated is None else \
                f"{time.strftime('%H:%M:%S', time.localtime(driver.updated))}, {_ago(driver.updated, now)}"
            lines.append(f"workers: stale (driver not updating since {since}) {at_step}")
        for w in workers:
            # Alive flags are only news while the driver that wrote them still runs.
            shown = ("alive" if w.get("alive") else "DEAD") if driver.state == "running" else driver.state
            lines.append(f"  slot {w.get('slot', '?')}: {shown}  weight version {w.get('weight_version', '-')}")
    ckpt = state.checkpoint
    lines.append("checkpoint: none yet" if ckpt is None else
                 f"checkpoint: step {ckpt['step']} ({_ago(ckpt.get('saved_at'), now)}) {ckpt['path']}")
    sel = state.selection
    if sel:
        lines.append(f"model: rl/model is the step {sel.get('step', '-')} checkpoint, "
                     f"selected by {sel.get('metric', '-')} {_fmt(sel.get('value'))}")
    return "\n".join(lines)
