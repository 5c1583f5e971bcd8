"""GRASP as a SASRec plug-in (`gream baseline sasrec --grasp K`): frozen retrieval features of items
and users, fused into SASRec by sigmoid attention, trained with SASRec's loss.

- Item descriptions: the text each item is indexed by (the teacher's rewrite where index.rewrite is
  on, else the item's text fields), embedded by the index's encoder. Each item's features are its own
  description and the mean of its K most similar other items' descriptions (cosine).
- User descriptions: the mean description of the items in the history the model reads (a prefix for
  a training row, so no row sees its own future), and the mean description of the K training users
  most similar to it, the row's own user left out. A training user's description covers all their
  training interactions.
- Fusion: an MLP maps the frozen features to SASRec's width; a fine-grained attention lets each item
  vector weigh its two features, a global one lets the user state weigh the user's two, each with
  sigmoid weights (features are not made to compete, as softmax would) and added to the vector.
  The fused item vectors are both SASRec's input and its output layer, so an item with few
  interactions is scored through its description too.

GREAM's user descriptions are written by an LLM; here a user is described by the items they bought,
in the same embedding space, which needs no generation.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from cluster.errors import BadRequest
from cluster.spec import JobSpec
from indexing.dataset import Dataset, Example, Split
from indexing.neighbours import retrieve, similar_items
from indexing.segments import training_items
from sft.sasrec import Plugin, SASRec, SasrecConfig


def mean_of(rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    """[n, D]: mean of table[rows[i]] for each i."""
    return table[rows].mean(axis=1)


def item_features(desc: np.ndarray, k: int) -> np.ndarray:
    """[items, 2, D]: each item's description and the mean of its k most similar items' ones."""
    return np.stack([desc, mean_of(similar_items(desc, k), desc)], axis=1).astype(np.float32)


def history_description(items: Sequence[int], desc: np.ndarray) -> np.ndarray:
    return desc[list(items)].mean(axis=0) if len(items) else np.zeros(desc.shape[1], dtype=desc.dtype)


def user_bank(train: Sequence[Example], desc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(user ids, [users, D] descriptions from each user's training interactions)."""
    bought = training_items(train)
    users = np.array(sorted(bought), dtype=np.int64)
    return users, np.stack([history_description(bought[u], desc) for u in users])


class SigmoidAttention(nn.Module):
    """A query [B, H] weighs features [B, M, H] with sigmoid(q . W f / sqrt(H)) and returns
    (sum of weight x V f [B, H], weights [B, M]); weights are independent, not a distribution."""

    def __init__(self, hidden: int):
        super().__init__()
        self.key = nn.Linear(hidden, hidden, bias=False)
        self.value = nn.Linear(hidden, hidden, bias=False)
        self.scale = hidden ** -0.5

    def forward(self, query: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = torch.sigmoid((self.key(feats) @ query.unsqueeze(-1)).squeeze(-1) * self.scale)
        return (weights.unsqueeze(-1) * self.value(feats)).sum(-2), weights


def projector(dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))


class GraspSASRec(SASRec):
    def __init__(self, num_items: int, max_len: int, cfg: SasrecConfig, item_feats: np.ndarray):
        super().__init__(num_items, max_len, cfg)
        dim = item_feats.shape[-1]
        padded = np.concatenate([item_feats, np.zeros((1, *item_feats.shape[1:]), dtype=np.float32)])
        self.register_buffer("item_feats", torch.from_numpy(padded), persistent=False)
        self.item_proj, self.user_proj = projector(dim, cfg.hidden), projector(dim, cfg.hidden)
        self.fine, self.coarse = SigmoidAttention(cfg.hidden), SigmoidAttention(cfg.hidden)

    def item_table(self) -> torch.Tensor:
        fused, _ = self.fine(self.item.weight, self.item_proj(self.item_feats))
        return self.item.weight + fused

    def states(self, seqs: torch.Tensor, context: torch.Tensor | None = None,
               table: torch.Tensor | None = None) -> torch.Tensor:
        h = super().states(seqs, table=table)
        if context is None:
            raise BadRequest("SASRec+GRASP needs each row's user features (context)")
        feats = self.user_proj(context)  # [B, 2, H]
        length = h.shape[1]
        fused, _ = self.coarse(h.reshape(-1, h.shape[-1]), feats.repeat_interleave(length, 0))
        return h + fused.reshape(h.shape)


class Grasp(Plugin):
    name = "sasrec_grasp"

    def __init__(self, desc: np.ndarray, train: Sequence[Example], k: int, max_len: int):
        self.k, self.desc, self.max_len = k, desc, max_len
        self.items = item_features(desc, k)
        self.bank_users, self.bank = user_bank(train, desc)

    @staticmethod
    def check(cfg: SasrecConfig) -> None:
        if cfg.objective != "last":
            raise BadRequest("--grasp trains with objective 'last': a row's user features come from its history, "
                             f"and objective {cfg.objective!r} supervises positions before the row's end")

    def model(self, num_items: int, max_len: int, cfg: SasrecConfig) -> SASRec:
        return GraspSASRec(num_items, max_len, cfg, self.items)

    def context(self, examples: list[Example]) -> torch.Tensor:
        """[rows, 2, D]: the row's history description and the mean of its K nearest other training users'."""
        own = np.stack([history_description(ex.history[-self.max_len:], self.desc) for ex in examples])
        near = retrieve(own, self.bank, self.k, [ex.user for ex in examples], self.bank_users)
        return torch.from_numpy(np.stack([own, mean_of(near, self.bank)], axis=1).astype(np.float32))


def plugin(k: int):
    """For sft.sasrec_eval.run: GRASP's features on the spec's items and training split."""
    def build(spec: JobSpec, ds: Dataset, split: Split, cfg: SasrecConfig) -> Grasp:
        from indexing.build import item_text_embeddings

        Grasp.check(cfg)  # before the features, which may mean embedding the catalogue
        return Grasp(item_text_embeddings(spec, ds), split.train, k, spec.data.max_history)

    return build
