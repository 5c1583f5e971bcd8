"""Nearest neighbours by cosine similarity (faiss, exact): the items most like an item, which GRASP's
features (sft/grasp.py) and the SFT prompt's similar items (sft.retrieved_items) are made of."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import faiss
import numpy as np

from cluster.errors import GreamError
from cluster.files import save_array

RELATED_MAX = 10  # neighbours per item the index stage stores (related_items.npy)


class NeighbourError(GreamError, ValueError):
    """A neighbour query that cannot be answered."""


def unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 rows of length 1 (an all-zero row stays zero)."""
    return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12), dtype=np.float32)


def retrieve(queries: np.ndarray, bank: np.ndarray, k: int, query_ids: Sequence[int] | None = None,
             bank_ids: Sequence[int] | None = None) -> np.ndarray:
    """[queries, k] rows of `bank` most cosine-similar to each query, most similar first; with ids,
    a bank row with the query's own id is never returned."""
    if k >= len(bank):
        raise NeighbourError(f"retrieving k={k} neighbours from {len(bank)} candidates; expected k < {len(bank)}")
    q, b = unit_rows(queries), unit_rows(bank)
    index = faiss.IndexFlatIP(b.shape[1])
    index.add(b)
    _, found = index.search(q, k + 1)  # one spare for the query itself
    if query_ids is None:
        return found[:, :k]
    owner = np.asarray(bank_ids)[found]
    out = np.empty((len(q), k), dtype=np.int64)
    for row, (ids, own) in enumerate(zip(found, owner)):
        out[row] = ids[own != query_ids[row]][:k]
    return out


def similar_items(desc: np.ndarray, k: int) -> np.ndarray:
    """[items, k]: each item's k most similar other items."""
    items = np.arange(len(desc))
    return retrieve(desc, desc, k, items, items)


def write_related(path: Path, desc: np.ndarray) -> Path:
    """The RELATED_MAX most similar items of every item, [items, RELATED_MAX] int32, atomically."""
    return save_array(path, similar_items(desc, min(RELATED_MAX, len(desc) - 1)).astype(np.int32))
