"""The launch stage `sasrec`: `gream baseline sasrec` inside `gream launch`, with the settings and
seed of the spec's `sasrec` section, so a spec can train its own teacher before the stages that
use it (`sft.distill`, `rl.teacher`, `eval.rerank`)."""
from __future__ import annotations

from pathlib import Path

from cluster.spec import JobSpec
from sft.sasrec import config_from
from sft.sasrec_eval import run as train_and_evaluate


def run(spec: JobSpec) -> Path:
    return train_and_evaluate(spec, config_from(spec.sasrec.config, seed=spec.sasrec.seed))
