"""`gream baseline sasrec`: SASRec (sft/sasrec.py) trained and evaluated on the spec's split, and
what it leaves in its folder: eval.json (the reported users' figures, their long-tail segments, the
beyond-accuracy metrics of their top-K lists, the all-user figures and the settings), ranks.json
(cluster.eval_record) and the scorer RL's teacher reward loads."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cluster.device import resolve
from cluster.eval_record import RankRecord, split_ranks, write_eval
from cluster.logs import fields
from cluster.spec import JobSpec
from indexing.build import built_text_embeddings, index_path
from indexing.dataset import Dataset, Example, Split, load_from_spec, split_from_spec
from indexing.segments import segment_masks
from indexing.sid import SidIndex
from sft.beyond_accuracy import Catalogue, per_user, summary
from sft.metrics import segment_report
from sft.sasrec import Fitted, Plugin, SasrecConfig, batch_scores, encode, out_dir, train_and_evaluate
from sft.sasrec_scorer import save_scorer

log = logging.getLogger(__name__)


def top_items(fitted: Fitted, examples: list[Example], max_len: int, cfg: SasrecConfig, k: int) -> np.ndarray:
    """[examples, k]: the k best-scored items of each example, under the config's protocol."""
    device = next(fitted.model.parameters()).device
    seqs, targets = encode(examples, max_len, fitted.model.pad)
    tops = [s.topk(k, dim=1).indices.cpu() for s, _ in batch_scores(
        fitted.model, seqs, targets, cfg.batch_size, device, cfg.exclude_history, fitted.plugin.context(examples))]
    return torch.cat(tops).numpy().astype(np.int64)


def write_result(spec: JobSpec, ds: Dataset, split: Split, result: dict, cfg: SasrecConfig, secs: float,
                 name: str = "sasrec", **meta) -> Path:
    """eval.json (reported users, their segments and lists, all-user figures, settings under `meta`),
    ranks.json, the scorer."""
    depth, users, k = spec.eval.beam_width, spec.eval.max_users, max(spec.eval.ks)
    index = SidIndex.load(index_path(spec)) if index_path(spec).exists() else None
    catalogue = Catalogue.build(split.train, ds.num_items, index, built_text_embeddings(spec, ds))
    splits, figures = {}, {}
    for split_name, examples in (("valid", split.valid), ("test", split.test)):
        shown = examples[:users]
        top = top_items(result["fitted"], shown, spec.data.max_history, cfg, k)
        values = per_user(top, catalogue, k)
        splits[split_name] = split_ranks([ex.user for ex in shown], result["ranks"][split_name][:users], depth,
                                         segment_masks(shown, split.train), top, values)
        figures[split_name] = {**result[split_name], **summary(values, top, catalogue.items, k)}
    ranks = RankRecord(depth, tuple(spec.eval.ks), splits, items=catalogue.items)
    out = {**figures, "segments": segment_report(ranks.splits, spec.eval.ks),
           "meta": {"all_users": result["all_users"], "best_epoch": result["best_epoch"], "train_secs": round(secs, 1),
                    **({"with_history": result["with_history"]} if "with_history" in result else {}),
                    "dataset": ds.name, "split": spec.data.split, "config": asdict(cfg), **meta}}
    path = write_eval(out_dir(spec, name), out, ranks)
    if result["fitted"].plugin.name == Plugin.name:  # a variant reads features a teacher request lacks
        save_scorer(path.parent, result["fitted"].model, cfg, ds.name, ds.num_items)
    log.info("sasrec done", extra=fields(path=str(path), **{f"test_{k}": round(v, 4) for k, v in out["test"].items()}))
    return path


def run(spec: JobSpec, cfg: SasrecConfig | None = None,
        plugin: Callable[[JobSpec, Dataset, Split, SasrecConfig], Plugin] | None = None) -> Path:
    """Train and evaluate SASRec (or the variant `plugin` builds for these settings) on the spec's
    split; writes `<run_dir>/baselines/<sasrec or the variant's name>/eval.json` and `ranks.json`."""
    cfg = cfg or SasrecConfig()
    ds = load_from_spec(spec)
    split = split_from_spec(spec, ds)
    device = resolve(spec.cluster.device).torch_device()
    t0 = time.perf_counter()
    variant = plugin(spec, ds, split, cfg) if plugin else Plugin()
    result = train_and_evaluate(split, ds.num_items, spec.data.max_history, spec.eval.ks, cfg, device,
                                spec.eval.max_users, variant)
    return write_result(spec, ds, split, result, cfg, time.perf_counter() - t0, variant.name)
