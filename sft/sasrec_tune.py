"""`gream baseline sasrec --tune`: SASRec's settings chosen on validation within a wall-time budget.

The grid (hidden size, blocks, dropout, lr, full vs sampled softmax) is searched as sft/tuning.py
does. Each trial trains with early stopping on validation NDCG@10 (sft/sasrec.py `fit`); the budget is
checked after every epoch, and a trial cut by it keeps its best epoch so far (marked `out_of_time`).
The best trial by validation NDCG@10 is then evaluated on test, once; `tune.json` lists every trial
beside eval.json and ranks.json.

The budget defaults to the wall time of the run's SFT stage (`sft/train_summary.json`), so the
baseline gets as much time as the model it is compared with.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Mapping, Sequence

import torch

from cluster.device import resolve
from cluster.errors import MissingArtefact
from cluster.logs import fields
from cluster.spec import JobSpec
from indexing.dataset import Split, load_from_spec, split_from_spec
from sft.metrics import metrics_from_ranks, selection_metric
from sft.sasrec import Fitted, SasrecConfig, evaluation, fit, out_dir, ranks_on
from sft.sasrec_eval import write_result
from sft.tuning import budgeted_search, grid_configs

log = logging.getLogger(__name__)

GRID: dict[str, tuple] = {
    "hidden": (64, 128, 256),
    "blocks": (1, 2),
    "dropout": (0.2, 0.5),
    "lr": (1e-3, 3e-3),
    "loss": ("full", "sampled"),
}


def default_budget(spec: JobSpec) -> float:
    """The SFT stage's wall time in this run, from sft/train_summary.json."""
    path = spec.layout.train_summary
    if not path.exists():
        raise MissingArtefact(f"{path}: no SFT run to take the tuning budget from; pass --budget-s SECONDS")
    return float(json.loads(path.read_text())["train_secs"])


def tune(split: Split, num_items: int, max_len: int, ks: list[int], configs: Sequence[SasrecConfig],
         device: torch.device, budget_s: float) -> tuple[Fitted, SasrecConfig, list[dict]]:
    """Train the configs in order until the budget is spent (at least one trial runs); returns the
    best trial's fitted model and config, and one record per trial."""
    key = selection_metric(ks)

    def trial(cfg: SasrecConfig, deadline: float) -> tuple[float, Fitted, dict]:
        fitted = fit(split, num_items, max_len, ks, cfg, device, deadline)
        valid = metrics_from_ranks(fitted.valid_ranks, ks)
        log.info("sasrec trial", extra=fields(**{k: v for k, v in asdict(cfg).items() if k in GRID},
                                              **{f"valid_{key}": round(valid[key], 4)}))
        return valid[key], fitted, {"config": asdict(cfg), "valid": valid, "best_epoch": fitted.best_epoch,
                                    "epochs": fitted.epochs, "out_of_time": fitted.out_of_time}

    cfg, fitted, trials = budgeted_search(configs, budget_s, trial)
    return fitted, cfg, trials


def run(spec: JobSpec, base: SasrecConfig | None = None, budget_s: float | None = None,
        grid: Mapping[str, Sequence] = GRID) -> Path:
    """Tune on validation, test the best config once; writes eval.json, ranks.json and tune.json
    under `<run_dir>/baselines/sasrec/`."""
    base = base or SasrecConfig()
    budget_s = default_budget(spec) if budget_s is None else budget_s
    ds = load_from_spec(spec)
    split = split_from_spec(spec, ds)
    device = resolve(spec.cluster.device).torch_device()
    configs = grid_configs(base, grid)
    t0 = time.perf_counter()
    fitted, cfg, trials = tune(split, ds.num_items, spec.data.max_history, spec.eval.ks, configs, device, budget_s)
    ks = spec.eval.ks
    result = evaluation(fitted, ranks_on(split.test, fitted, spec.data.max_history, cfg, device), ks,
                        spec.eval.max_users)
    secs = time.perf_counter() - t0
    path = write_result(spec, ds, split, result, cfg, secs, tuned={"trials": len(trials), "grid": len(configs),
                                                                      "budget_s": budget_s})
    (out_dir(spec) / "tune.json").write_text(json.dumps(
        {"budget_s": budget_s, "secs": round(secs, 1), "metric": selection_metric(ks), "grid": dict(grid),
         "chosen": asdict(cfg), "trials": trials}, indent=2))
    return path
