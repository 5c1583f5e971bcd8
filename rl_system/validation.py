"""Validation inside the RL run: the current policy's Recall/NDCG@10 on a fixed sample of validation
users, through the rollout workers (so it measures the weights they serve), in the answer mode the
run trains (rl.mode: direct beam, or reasoning: greedy thought then the beam after `<answer>`,
rl_system.answer_modes), so that selection rewards what RL optimises.

The sample depends only on `rl.eval_seed`, never on the RL seed, so every RL seed of a recipe is
selected on the same users, and the SFT model's figure at step 0 is the baseline each run must beat.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from indexing.dataset import Example
from indexing.sid import SidIndex
from rl_system.answer_modes import AnswerConfig
from rl_system.evaluate import build_prompts, mode_ranks, token_mapper
from rl_system.rollout.constraint import ANSWER_OPEN
from sft.metrics import metrics_from_ranks

K = 10
KEYS = (f"val/recall@{K}", f"val/ndcg@{K}")


class InRunValidation:
    def __init__(self, pool, tokenizer, index: SidIndex, examples: Sequence[Example], width: int,
                 related: np.ndarray | None = None, mode: str = "direct", think_tokens: int = 0):
        if width < K:
            raise ValueError(f"in-run validation ranks the top {K}; eval.beam_width is {width}")
        self.pool, self.mode = pool, mode
        self.cfg = AnswerConfig(width, think_tokens, 0, tokenizer.get_vocab().get(ANSWER_OPEN))
        self.direct = build_prompts(tokenizer, index, examples, False, related)
        self.reasoning = build_prompts(tokenizer, index, examples, True, related) if mode == "reasoning" else None
        self.token_to_item = token_mapper(tokenizer, index)

    def __call__(self) -> dict[str, float]:
        metrics = metrics_from_ranks(
            mode_ranks(self.pool, self.cfg, self.mode, self.direct, self.reasoning, self.token_to_item), [K])
        return {f"val/{name}": metrics[name] for name in (f"recall@{K}", f"ndcg@{K}")}
