"""Collaborative item vectors from the training split: co-occurrence -> PPMI -> truncated SVD.

Text embeddings put items that read alike under one code; the sequential model, though, has to
predict codes from what users buy together. Mixing a co-occurrence vector into the vector that
residual k-means clusters (LETTER's collaborative signal, here without training a recommender
first) lets the first levels group items that are bought in the same histories as well as items
that are described alike. Only training targets count, so no validation or test item leaks into the
index.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import svds

from cluster.errors import GreamError
from indexing.dataset import Example


class CollaborativeError(GreamError, ValueError):
    """Unusable settings for the collaborative vectors."""


def cooccurrence(examples: Sequence[Example], num_items: int, window: int) -> sparse.csr_matrix:
    """Symmetric counts: each training target with each of the `window` items bought just before it."""
    rows, cols = [], []
    for ex in examples:
        for h in ex.history[-window:]:
            if h != ex.target:
                rows.append(ex.target)
                cols.append(h)
    # Converting to CSR sums the repeated (target, history item) pairs into counts.
    counts = sparse.coo_matrix((np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=(num_items, num_items)).tocsr()
    return (counts + counts.T).tocsr()


def ppmi(counts: sparse.csr_matrix) -> sparse.csr_matrix:
    """Positive pointwise mutual information of a symmetric count matrix (zeros stay zero)."""
    total = counts.sum()
    if total == 0:
        return counts.astype(np.float64)
    marginal = np.asarray(counts.sum(axis=1)).ravel()
    coo = counts.tocoo()
    pmi = np.log(coo.data * total / (marginal[coo.row] * marginal[coo.col]))
    keep = pmi > 0
    return sparse.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=counts.shape)


def collaborative_vectors(examples: Sequence[Example], num_items: int, dim: int, window: int,
                          seed: int = 0) -> np.ndarray:
    """[num_items, dim] unit rows from the PPMI matrix's top singular directions (U sqrt(S)); items that
    never co-occur with another get a zero row."""
    if dim >= num_items:
        raise CollaborativeError(f"index.collaborative.dim: {dim} must be below the number of items ({num_items})")
    matrix = ppmi(cooccurrence(examples, num_items, window))
    if matrix.nnz == 0:
        raise CollaborativeError("index.collaborative: the training split has no co-occurring items; "
                                 "set index.collaborative.weight to 0")
    v0 = np.random.default_rng(seed).standard_normal(num_items)
    u, s, _ = svds(matrix, k=dim, v0=v0)
    vectors = u * np.sqrt(s)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0).astype(np.float32)


def fuse(text: np.ndarray, collab: np.ndarray, weight: float) -> np.ndarray:
    """Unit rows whose squared distances are `1 - weight` text and `weight` collaborative; an item with
    no collaborative signal keeps its text direction alone."""
    if not 0.0 <= weight < 1.0:
        raise CollaborativeError(f"index.collaborative.weight: {weight} must be in [0, 1)")
    has_signal = np.linalg.norm(collab, axis=1, keepdims=True) > 0
    text_share = np.where(has_signal, np.sqrt(1.0 - weight), 1.0)
    return np.hstack([text * text_share, collab * np.sqrt(weight)]).astype(np.float32)
