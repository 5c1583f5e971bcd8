"""The job spec's `eval.rerank`: generate, then re-rank. The beam of `width` candidates is re-scored
by a trained SASRec, score = policy log p(SID) + weight x log p_T(item | history), and its best
`eval.beam_width` are the answer (rl_system/rerank.py holds the math); `gream eval` and `gream serve`
answer this way when `path` is set. `path: popularity` re-scores by the inverse-popularity prior
instead, log p_T(item) = -log(1 + the item's training interactions): a popularity correction of the
beam, score = policy log p - weight x log(1 + count)."""
from __future__ import annotations

from pydantic import Field

from cluster.cluster_spec import Section as _Section

POPULARITY = "popularity"  # the `path` of the inverse-popularity prior, which needs no trained scorer


class RerankSpec(_Section):
    # A `gream baseline sasrec` folder (model.safetensors, scorer.json) of this catalogue, or
    # "popularity" (the training split's inverse-popularity prior); None: off. Relative to the working
    # directory, as rl.teacher.path is.
    path: str | None = None
    weight: float = Field(1.0, ge=0)  # 0 keeps the beam's own order
    width: int = Field(50, ge=1)  # candidates generated; at least eval.beam_width, the answers kept
