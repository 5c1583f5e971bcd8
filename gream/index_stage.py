"""The index stage as `gream index` and `gream launch` run it: indexing.build, handed SASRec's item
embeddings for FlexCode's collaborative codebook (sft sits above indexing, so indexing cannot train
SASRec itself).

The embeddings are cached in the index folder under a hash of the data section and the SASRec
settings: a rebuild that changes only how they are quantized does not train SASRec again.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict

import numpy as np

from cluster.device import resolve
from cluster.files import save_array
from cluster.logs import fields
from cluster.spec import JobSpec
from indexing import build
from indexing.dataset import Dataset, Split
from sft.sasrec import SasrecConfig, check_settings, fit

log = logging.getLogger(__name__)


def sasrec_config(spec: JobSpec) -> SasrecConfig:
    settings = check_settings(spec.index.flexcode.sasrec, f"{spec.source or 'spec'}: key 'index.flexcode.sasrec'")
    return SasrecConfig(**{"seed": spec.index.seed, **settings})


def sasrec_item_vectors(spec: JobSpec, ds: Dataset, split: Split) -> np.ndarray:
    """[items, hidden] item embeddings of SASRec trained on split.train (early stopping on valid)."""
    cfg = sasrec_config(spec)
    key = json.dumps({"data": spec.section_hash("data"), "sasrec": asdict(cfg), "ks": spec.eval.ks}, sort_keys=True)
    cache = spec.layout.stage("index") / "cache" / f"sasrec-items-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npy"
    if cache.exists():
        log.info("sasrec item vectors from cache", extra=fields(path=str(cache)))
        return np.load(cache)
    device = resolve(spec.cluster.device).torch_device()
    fitted = fit(split, ds.num_items, spec.data.max_history, spec.eval.ks, cfg, device)
    vectors = fitted.model.item.weight[: ds.num_items].detach().float().cpu().numpy()
    log.info("sasrec item vectors trained", extra=fields(best_epoch=fitted.best_epoch, epochs=fitted.epochs,
                                                          valid_recall_at_10=round(float(np.mean(fitted.valid_ranks < 10)), 4)))
    save_array(cache, vectors)
    return vectors


def run(spec: JobSpec) -> dict:
    if spec.index.scheme == "flexcode":
        sasrec_config(spec)  # a bad setting exits before minutes of text embedding, not after
    return build.run(spec, cf_vectors=sasrec_item_vectors)
