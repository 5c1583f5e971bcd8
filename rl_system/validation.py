"""Validation inside the RL run: the current policy's Recall/NDCG@10 on a fixed sample of validation
users (or every one, `rl.eval_users: all`), in the answer mode the run trains, so that selection
rewards what RL optimises.

Two paths, by `eval.backend` (cluster.device.eval_backend):
- torch (the default on CPUs; direct mode): the learner ranks run SFT validation's beam
  (sft.validation.Validator) on the policy they hold, each on its share of the users, so the
  figure costs a few batched forwards rather than an engine request per beam and SID level;
- vllm, and reasoning mode (greedy thought, then the beam after `<answer>`, rl_system.answer_modes):
  the rollout workers answer, so the figure is that of the weights they serve.
Both rank alike (tests/rl_system/test_eval_backend.py).

The sample depends only on `rl.eval_seed`, never on the RL seed, so every RL seed of a recipe is
selected on the same users, and the SFT model's figure at step 0 is the baseline each run must beat.

Beside accuracy, the beyond-accuracy metrics of the users' top 10 (sft.beyond_accuracy) that the
objective rewards (`rl.objectives`) aim at: tail share, novelty, distinct first-level codes and
coverage; not the text intra-list distance, which would load the text encoder into the driver.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cluster import device as device_mod
from cluster.spec import JobSpec
from indexing.dataset import Example
from indexing.sid import SidIndex
from rl_system.answer_modes import AnswerConfig
from rl_system.evaluate import build_prompts, mode_answers, sample_users, token_mapper
from rl_system.rollout.constraint import ANSWER_OPEN
from sft.beyond_accuracy import Catalogue, list_metrics
from sft.metrics import metrics_from_ranks
from sft.validation import Validator

K = 10
LISTS = (f"tail_share@{K}", f"novelty@{K}", f"distinct_codes@{K}", f"coverage@{K}")
KEYS = (f"val/recall@{K}", f"val/ndcg@{K}", *(f"val/{name}" for name in LISTS))


def _report(ranks: np.ndarray, top: np.ndarray, catalogue: Catalogue | None) -> dict[str, float]:
    metrics = metrics_from_ranks(ranks, [K])
    if catalogue is not None:
        metrics.update(list_metrics(top, catalogue, K))
    return {key: metrics[key.removeprefix("val/")] for key in KEYS if key.removeprefix("val/") in metrics}


def _check_width(width: int) -> None:
    if width < K:
        raise ValueError(f"in-run validation ranks the top {K}; eval.beam_width is {width}")


class InRunValidation:
    """Through the rollout workers' engines."""

    def __init__(self, pool, tokenizer, index: SidIndex, examples: Sequence[Example], width: int,
                 related: np.ndarray | None = None, mode: str = "direct", think_tokens: int = 0,
                 catalogue: Catalogue | None = None):
        """`catalogue`: for the beyond-accuracy metrics (none without it)."""
        _check_width(width)
        self.pool, self.mode, self.catalogue = pool, mode, catalogue
        self.cfg = AnswerConfig(width, think_tokens, 0, tokenizer.get_vocab().get(ANSWER_OPEN))
        self.direct = build_prompts(tokenizer, index, examples, False, related)
        self.reasoning = build_prompts(tokenizer, index, examples, True, related) if mode == "reasoning" else None
        self.token_to_item = token_mapper(tokenizer, index)

    def __call__(self) -> dict[str, float]:
        return _report(*mode_answers(self.pool, self.cfg, self.mode, self.direct, self.reasoning, self.token_to_item, K),
                       self.catalogue)


class LearnerValidation:
    """On the learner ranks, with the torch beam (direct mode). `learner`: a LearnerGroup;
    `vocab_size`: the policy's output rows; `shared`: every rank ranks every user (ZeRO-3, whose
    forward is collective), else rank r ranks users r, r + W, ..."""

    def __init__(self, learner, tokenizer, index: SidIndex, examples: Sequence[Example], width: int,
                 vocab_size: int, related: np.ndarray | None = None, shared: bool = False, exclusive: bool = False,
                 catalogue: Catalogue | None = None):
        """`exclusive`: nothing else computes while it validates (synchronous RL), so each rank
        may use every core of its node."""
        _check_width(width)
        self.learner, self.users, self.shared, self.exclusive = learner, len(examples), shared, exclusive
        self.catalogue = catalogue
        world = learner.world_size
        shards = [list(examples)] * world if shared else [list(examples[r::world]) for r in range(world)]
        learner.call_each("set_validator", [Validator(tokenizer, index, s, [K], vocab_size, related, width) if s else None
                                            for s in shards])

    def __call__(self) -> dict[str, float]:
        per_rank = self.learner.call("validation_answers", self.exclusive)
        if self.shared:
            return _report(np.asarray(per_rank[0][0]), np.asarray(per_rank[0][1])[:, :K], self.catalogue)
        ranks = np.empty(self.users, dtype=np.int64)
        top = np.empty((self.users, K), dtype=np.int64)
        for r, (part, items) in enumerate(per_rank):
            ranks[r::len(per_rank)] = part
            top[r::len(per_rank)] = np.asarray(items, dtype=np.int64).reshape(len(part), -1)[:, :K]
        return _report(ranks, top, self.catalogue)


def in_run_validation(spec: JobSpec, learner, pool, tokenizer, index: SidIndex,
                      split, related, model: Path) -> Callable[[], dict[str, float]] | None:
    """RL's validation (`rl.eval_every`; None when off) by `eval.backend`: the torch beam on the
    learner ranks in direct mode, the rollout workers otherwise. `split`: its valid users are
    validated, its training targets give the items' popularity."""
    rl, valid = spec.rl, split.valid
    if not rl.eval_every:
        return None
    users = sample_users(valid, len(valid) if rl.eval_users == "all" else rl.eval_users, rl.eval_seed)
    catalogue = Catalogue.build(split.train, index.num_items, index)
    backend = device_mod.eval_backend(spec.eval.backend, device_mod.resolve(spec.cluster.device))
    if backend == "torch" and rl.mode == "direct":
        from transformers import AutoConfig

        vocab_size = AutoConfig.from_pretrained(model).vocab_size
        return LearnerValidation(learner, tokenizer, index, users, spec.eval.beam_width, vocab_size, related,
                                 shared=rl.zero_stage == 3,
                                 exclusive=rl.max_staleness == 0 and spec.cluster.learner.num_ranks == 1,
                                 catalogue=catalogue)
    return InRunValidation(pool, tokenizer, index, users, spec.eval.beam_width, related, rl.mode, rl.reasoning_tokens,
                           catalogue)
