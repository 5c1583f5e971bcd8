"""A teacher model in the reward service: a trained SASRec (`gream baseline sasrec`, the
validation-selected one under `--tune`) scores each completion's item given the user's history.

RL on the SFT model's own data with a hit reward adds nothing MLE did not have (DESIGN.md section
11); a separately trained scorer that ranks better than the policy brings information it lacks.
Each replica loads the scorer once; a request carries one history (item ids) per completion, and
the reply gives log p_T(item | history) over the whole catalogue and the item's 0-based catalogue
rank. The reward forms built from them are pure functions (functions.teacher_reward).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from sft.sasrec_scorer import check_teacher, load_scorer

CANDIDATE_ROWS = 4096  # candidates per scoring call: each holds a catalogue-wide row of scores


class Teacher:
    def __init__(self, folder: str | Path, num_items: int, dataset: str):
        self.meta = check_teacher(folder, num_items, dataset)
        self.folder = str(folder)
        self.model, _ = load_scorer(folder)
        self.pad, self.max_len = self.model.pad, self.model.max_len

    def score(self, histories: Sequence[Sequence[int]], items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log p_T(item | history), the item's 0-based rank in the catalogue under T) per row;
        (-inf, -1) where `items` is -1 (the completion names no item). Each distinct history runs once."""
        return self.score_with_targets(histories, items, None)[:2]

    def score_with_targets(self, histories: Sequence[Sequence[int]], items: np.ndarray,
                           targets: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """`score`, and from the same forward log p_T(target | history) per row (-inf for -1): what the
        gate compares with the rollout's negatives."""
        logp = self._log_probs(histories)
        item_logp = _pick(logp, items)
        rank = np.where(item_logp > -np.inf, (logp > torch.as_tensor(item_logp)[:, None]).sum(1).numpy(), -1)
        return item_logp, rank.astype(np.int64), None if targets is None else _pick(logp, targets)

    def _log_probs(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """log p_T(. | history) over the catalogue, one row per history; each distinct history runs once."""
        rows: dict[tuple[int, ...], int] = {}
        which = np.array([rows.setdefault(tuple(h[-self.max_len:]), len(rows)) for h in histories], dtype=np.int64)
        seqs = torch.full((len(rows), self.max_len), self.pad, dtype=torch.long)
        for history, r in rows.items():
            if history:
                seqs[r, -len(history):] = torch.as_tensor(history)
        with torch.no_grad():
            return torch.log_softmax(self.model.scores(seqs).float(), dim=-1)[torch.as_tensor(which)]

    def candidate_logp(self, histories: Sequence[Sequence[int]], items: np.ndarray) -> np.ndarray:
        """log p_T(item | history) of each user's candidates `items` [U, W] (-1: an empty slot, -inf),
        scored in blocks of users so that memory stays bounded."""
        out = np.full(items.shape, -np.inf)
        users = max(1, CANDIDATE_ROWS // max(1, items.shape[1]))
        for start in range(0, len(items), users):
            block = items[start:start + users]
            repeated = [h for h in histories[start:start + users] for _ in range(block.shape[1])]
            out[start:start + users] = _pick(self._log_probs(repeated), block.ravel()).reshape(block.shape)
        return out


def _pick(logp: torch.Tensor, ids: np.ndarray) -> np.ndarray:
    """logp[row, ids[row]] per row; -inf where the id is -1."""
    ids = np.asarray(ids, dtype=np.int64)
    named = ids >= 0
    return np.where(named, logp.gather(1, torch.as_tensor(np.where(named, ids, 0))[:, None])[:, 0].numpy(), -np.inf)
