"""Validation of the model being trained (`sft.eval_every`, and RL's in-run validation on the learner):
Recall@K / NDCG@K of a fixed sample of validation users, ranked by a trie-constrained beam of width
max(eval.ks) (sft/hf_beam.py) over the same direct-mode prompt as `gream eval`.

The sample is drawn with a fixed seed, not `sft.seed`, so runs with different SFT seeds or settings
are validated on the same users and their curves compare.
"""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np
import torch

from indexing.dataset import Example
from indexing.sid import SidIndex
from indexing.trie import SidTrie
from sft.hf_beam import beam_search
from sft.metrics import MISSING, metrics_from_ranks, ranks_in_rows
from sft.prompts import build_prompts

SAMPLE_SEED = 0


def validation_sample(examples: Sequence[Example], size: int | None, seed: int = SAMPLE_SEED) -> list[Example]:
    """`size` examples drawn without replacement by `seed`, in split order; every one when `size`
    is None or not smaller than the split."""
    if size is None or size >= len(examples):
        return list(examples)
    picked = sorted(random.Random(seed).sample(range(len(examples)), size))
    return [examples[i] for i in picked]


class Validator:
    def __init__(self, tokenizer, index: SidIndex, examples: Sequence[Example], ks: Sequence[int], vocab_size: int,
                 related: np.ndarray | None = None, width: int | None = None):
        """`width`: the beam's (default max(ks)); a wider beam can rank a target the narrower misses
        into the top K, so the ranks are those of `gream eval` only at its `eval.beam_width`."""
        if not examples:
            raise ValueError("no validation examples to score")
        self.ks = sorted(set(ks))
        self.width = width or max(self.ks)
        if self.width < max(self.ks):
            raise ValueError(f"beam width {self.width} cannot rank the top {max(self.ks)}")
        self.prompts = build_prompts(tokenizer, index, examples, False, related)
        self.trie = SidTrie.from_index(index, tokenizer.get_vocab(), vocab_size, [tokenizer.eos_token_id])
        self.items = np.asarray(index.items(), dtype=np.int64)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @property
    def users(self) -> int:
        return len(self.prompts.targets)

    def answers(self, model, device: torch.device, amp_dtype: torch.dtype = torch.float32) -> tuple[np.ndarray, np.ndarray]:
        """0-based rank of each target in its beam (MISSING when not in it), and each beam's items,
        best first [users, width] (MISSING past the items it found)."""
        rows = beam_search(model, self.prompts.prompt_ids, self.trie, self.width, self.pad_id, device,
                           amp_dtype).rows.numpy()
        items = np.where(rows >= 0, self.items[rows.clip(min=0)], MISSING)
        return ranks_in_rows(items, self.prompts.targets), items

    def ranks(self, model, device: torch.device, amp_dtype: torch.dtype = torch.float32) -> np.ndarray:
        """0-based rank of each target in its beam, MISSING when not in it."""
        return self.answers(model, device, amp_dtype)[0]

    def score(self, model, device: torch.device, amp_dtype: torch.dtype = torch.float32) -> dict[str, float]:
        """Recall@K / NDCG@K over the sample; the model is put in eval mode (no dropout) and left so."""
        model.eval()
        return metrics_from_ranks(self.ranks(model, device, amp_dtype), self.ks)
