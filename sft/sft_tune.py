"""`gream sft SPEC --tune`: SFT settings chosen on validation within a wall-time budget.

The grid (the objective: sft.loss and sft.prefix_loss.kind; the embedded backbone's width and depth;
dropout, learning rate, epochs and the history length data.max_history) is searched as sft/tuning.py
does. Each trial is a whole SFT run in a run folder of its own, `<run_dir>/sft_tune/trial-NN/` (the
run's index linked in, the embedded backbone built there at the trial's size), validated on the spec's
`sft.eval_users` sample, the same users for every trial, every `sft.eval_every` epochs and after its
last one; the budget is checked after every epoch, and a trial it cuts is validated there and marked
`out_of_time`. `<run_dir>/sft_tune/tune.json` lists every trial with the `--set` overrides that make
it; the chosen trial's folder holds its model (`sft/model`), and those overrides added to the spec
train it again. A search replaces the previous search's folder.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

from cluster.errors import BadRequest
from cluster.logs import fields
from cluster.spec import JobSpec, apply_overrides
from indexing.dataset import load_from_spec
from sft.backbone import EMBEDDED_PREFIX
from sft.metrics import selection_metric
from sft.teach import read_for_sft, require_item_text
from sft.trainer import Trainer
from sft.tuning import budgeted_search, grid_configs

log = logging.getLogger(__name__)

GRID: dict[str, tuple] = {
    "objective": ("ce", "trie_ce", "trie_ce+pairwise", "trie_ce+pointwise"),
    "hidden_size": (64, 128, 192),
    "num_layers": (1, 2, 3),
    "dropout": (0.1, 0.3),
    "lr": (1e-3, 2e-3, 4e-3),
    "epochs": (10, 20, 30),
    "max_history": (10, 20, 50),
}
SIZE_KEYS = ("hidden_size", "num_layers")  # the embedded backbone's only: a folder backbone has its own


@dataclass(frozen=True)
class SftSettings:
    objective: str  # sft.loss, with "+pairwise" or "+pointwise" for sft.prefix_loss.kind
    hidden_size: int
    num_layers: int
    dropout: float
    lr: float
    epochs: int
    max_history: int

    @classmethod
    def of(cls, spec: JobSpec) -> "SftSettings":
        kind = spec.sft.prefix_loss.kind
        return cls(spec.sft.loss + ("" if kind == "none" else f"+{kind}"), spec.model.hidden_size,
                   spec.model.num_layers, spec.sft.dropout, spec.sft.lr, spec.sft.epochs, spec.data.max_history)

    def overrides(self) -> list[str]:
        """The spec keys that make these settings, as `--set` takes them."""
        loss, _, kind = self.objective.partition("+")
        return [f"sft.loss={loss}", f"sft.prefix_loss.kind={kind or 'none'}", f"model.hidden_size={self.hidden_size}",
                f"model.num_layers={self.num_layers}", f"sft.dropout={self.dropout}", f"sft.lr={self.lr}",
                f"sft.epochs={self.epochs}", f"data.max_history={self.max_history}"]


def trial_spec(spec: JobSpec, settings: SftSettings, run_dir: Path) -> JobSpec:
    """The spec with the settings, in its own run folder, validated at least after its last epoch."""
    eval_every = spec.sft.eval_every or settings.epochs
    raw = apply_overrides(spec.model_dump(mode="json"), [*settings.overrides(), f"run_dir={run_dir}",
                                                         f"sft.eval_every={eval_every}"], spec.source or "spec")
    out = JobSpec.model_validate(raw)
    out.source = spec.source
    return out


def run(spec: JobSpec, budget_s: float, grid: Mapping[str, Sequence] = GRID) -> Path:
    """Search, then write tune.json; returns its path."""
    if spec.cluster.sft.num_ranks > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise BadRequest("gream sft --tune trains each trial in this process; set cluster.sft.num_ranks: 1")
    require_item_text(spec, load_from_spec(spec))
    reasoning, preferences = read_for_sft(spec)
    if not spec.model.backbone.startswith(EMBEDDED_PREFIX):
        grid = {k: v for k, v in grid.items() if k not in SIZE_KEYS}
    base = SftSettings.of(spec)
    configs = [c for c in grid_configs(base, grid) if c.hidden_size % spec.model.num_heads == 0]
    root = spec.layout.sft_tune
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    index = spec.layout.stage("index").resolve()

    def trial(settings: SftSettings, deadline: float) -> tuple[float, Path, dict]:
        folder = root / f"trial-{len(list(root.glob('trial-*'))):02d}"
        folder.mkdir()
        (folder / "index").symlink_to(index, target_is_directory=True)
        tspec = trial_spec(spec, settings, folder)
        Trainer(tspec, reasoning, preferences).train(deadline)
        shutil.rmtree(tspec.layout.sft_checkpoints)  # resume points of a finished run: only the model is kept
        summary = json.loads(tspec.layout.train_summary.read_text())
        chosen = summary["selection"]
        score = chosen["valid"][chosen["metric"]]
        log.info("sft trial", extra=fields(folder=str(folder), **asdict(settings), **{f"valid_{chosen['metric']}": score}))
        return score, folder, {"settings": asdict(settings), "overrides": settings.overrides(), "run_dir": str(folder),
                               "valid": chosen["valid"], "best_epoch": chosen["epoch"], "epochs": summary["epochs"],
                               "out_of_time": summary["out_of_time"], "train_secs": summary["train_secs"]}

    t0 = time.perf_counter()
    settings, folder, trials = budgeted_search(configs, budget_s, trial)
    path = root / "tune.json"
    path.write_text(json.dumps({
        "budget_s": budget_s, "secs": round(time.perf_counter() - t0, 1), "metric": selection_metric(spec.eval.ks),
        "valid_users": spec.sft.eval_users, "grid": {k: list(v) for k, v in grid.items()}, "configs": len(configs),
        "base": asdict(base), "chosen": {"settings": asdict(settings), "overrides": settings.overrides(),
                                         "run_dir": str(folder)}, "trials": trials}, indent=2))
    return path
