"""FlexCode SIDs (`index.scheme: flexcode`): two codebooks and a popularity-aware split of each item's
tokens between them.

A collaborative codebook (residual k-means on item vectors learned from the training split) names
what users buy together; a semantic codebook (residual k-means on the text embeddings) names what
items are. Popular items have enough interactions for the first to be precise, long-tail items only
have their text, so an item whose training popularity reaches more of `cf_quantiles` spends more
of its `index.levels` tokens on collaborative codes: its SID is its first n collaborative codes,
then its first levels - n semantic codes.

Both codebooks write into one token grammar (`<a_12>`: level letter, code): collaborative codes keep
0..cf_codes-1, semantic codes are shifted by cf_codes, so no token names a code of both codebooks
and the trie, the LCP rewards, SFT, RL and evaluation take the index as any other.

Alignment: before quantization the collaborative vectors are mapped linearly into the text
space with a symmetric InfoNCE loss against each item's own text embedding, so the two codebooks'
reconstructions of one item are close (FlexCode's cross-codebook alignment, here on the vectors
both codebooks quantize, as faiss k-means is not trained by gradient).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from cluster.errors import GreamError
from indexing.neighbours import unit_rows


class FlexcodeError(GreamError, ValueError):
    """Settings FlexCode cannot build an index with."""


def popularity_quantiles(counts: np.ndarray) -> np.ndarray:
    """Per item, the share of items with strictly fewer training interactions (0 for the least
    popular, ties share a value, so equally popular items get equal token budgets)."""
    counts = np.asarray(counts)
    return np.searchsorted(np.sort(counts), counts, side="left") / len(counts)


def item_counts(counter: Counter, num_items: int) -> np.ndarray:
    out = np.zeros(num_items, dtype=np.int64)
    for item, n in counter.items():
        out[item] = n
    return out


def cf_token_counts(counts: np.ndarray, cf_quantiles: Sequence[float]) -> np.ndarray:
    """Collaborative tokens per item: how many of the (ascending) popularity quantiles the item reaches.
    Items never seen in training get none."""
    q = popularity_quantiles(counts)
    n = (q[:, None] >= np.asarray(cf_quantiles, dtype=np.float64)[None, :]).sum(axis=1)
    return np.where(np.asarray(counts) > 0, n, 0).astype(np.int64)


def compose(cf_codes: np.ndarray, sem_codes: np.ndarray, n_cf: np.ndarray, cf_size: int) -> np.ndarray:
    """codes [items, levels]: row i is cf_codes[i, :n_cf[i]] then sem_codes[i, :levels - n_cf[i]] + cf_size.
    `cf_codes` [items, >= max n_cf] (rows of items without collaborative tokens are ignored),
    `sem_codes` [items, levels]."""
    levels = sem_codes.shape[1]
    n_cf = np.asarray(n_cf)
    if n_cf.size and (n_cf.min() < 0 or n_cf.max() > levels):
        raise FlexcodeError(f"collaborative tokens per item must be in 0..{levels}, got {n_cf.min()}..{n_cf.max()}")
    out = np.empty_like(sem_codes)
    for i, n in enumerate(n_cf):
        out[i, :n] = cf_codes[i, :n]
        out[i, n:] = sem_codes[i, : levels - n] + cf_size
    return out


@dataclass(frozen=True)
class Alignment:
    vectors: np.ndarray  # unit rows [items, text dim]: the collaborative vectors in the text space
    loss_start: float
    loss_end: float


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE of unit rows: row i of `a` and row i of `b` are the positive pair, the other
    rows of the batch the negatives."""
    logits = a @ b.T / temperature
    labels = torch.arange(len(a))
    return (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2


def align(cf: np.ndarray, text: np.ndarray, steps: int, temperature: float, seed: int) -> Alignment:
    """A linear map of the collaborative rows into the text space trained (full batch, Adam) so that
    each item's mapped vector is nearest its own text embedding."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(cf, dtype=np.float32))
    t = torch.from_numpy(np.ascontiguousarray(text, dtype=np.float32))
    w = torch.nn.Parameter(torch.randn(x.shape[1], t.shape[1], generator=gen) / x.shape[1] ** 0.5)
    opt = torch.optim.Adam([w], lr=1e-2)
    target = torch.nn.functional.normalize(t, dim=1)

    def loss_now() -> torch.Tensor:
        return info_nce(torch.nn.functional.normalize(x @ w, dim=1), target, temperature)

    with torch.no_grad():
        start = float(loss_now())
    for _ in range(steps):
        loss = loss_now()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        mapped = torch.nn.functional.normalize(x @ w, dim=1)
        end = float(info_nce(mapped, target, temperature))
    return Alignment(mapped.numpy(), start, end)


def match_at_1(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows i whose most cosine-similar row of `b` is row i (chance: 1 / rows)."""
    a, b = unit_rows(a), unit_rows(b)
    return float(((a @ b.T).argmax(axis=1) == np.arange(len(a))).mean())


def reconstruct(codes: np.ndarray, centroids: Sequence[np.ndarray]) -> np.ndarray:
    """Sum of each row's chosen centre over the levels of residual k-means."""
    return sum(c[codes[:, level]] for level, c in enumerate(centroids))


def last_token_distances(n_cf: np.ndarray, cf_dist: Sequence[np.ndarray], sem_dist: Sequence[np.ndarray],
                         cf_size: int) -> np.ndarray:
    """[items, cf_size + semantic codes] squared distances of each item's residual to the centres of the
    level its last token comes from (collaborative level n-1 when every token is collaborative, else
    semantic level levels - n - 1), infinite for every code of the other codebook: what
    indexing.dedup.reassign_last_level needs to move a colliding item within its own codebook.
    `cf_dist[l]` / `sem_dist[l]`: [items, codes] distances at level l."""
    levels = len(sem_dist)
    out = np.full((len(n_cf), cf_size + sem_dist[0].shape[1]), np.inf, dtype=np.float32)
    for i, n in enumerate(n_cf):
        if n == levels:
            out[i, :cf_size] = cf_dist[n - 1][i]
        else:
            out[i, cf_size:] = sem_dist[levels - n - 1][i]
    return out
