"""The launch stage `sasrec`: `gream baseline sasrec` inside `gream launch`, with the settings and
seed of the spec's `sasrec` section, so a spec can train its own teacher before the stages that
use it (`sft.distill`, `rl.teacher`, `eval.rerank`)."""
from __future__ import annotations

from pathlib import Path

from cluster.spec import JobSpec
from sft.sasrec import SasrecConfig, read_config
from sft.sasrec_eval import run as train_and_evaluate


def run(spec: JobSpec) -> Path:
    settings = read_config(Path(spec.sasrec.config)) if spec.sasrec.config else {}
    return train_and_evaluate(spec, SasrecConfig(**{**settings, "seed": spec.sasrec.seed}))
