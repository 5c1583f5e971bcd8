"""The similar-items table of `sft.retrieved_items` for a run: the first k columns of the index stage's
related_items.npy, or None when the option is off. SFT, RL and evaluation all read it here, so
their prompts agree."""
from __future__ import annotations

import numpy as np

from cluster.errors import MissingArtefact
from cluster.spec import JobSpec


def related_table(spec: JobSpec) -> np.ndarray | None:
    k = spec.sft.retrieved_items
    if not k:
        return None
    path = spec.layout.related_items
    if not path.exists():
        why = ("an imported index (index.import_file) has no text embeddings to find them"
               if spec.index.import_file else "run the index stage again (gream index SPEC)")
        raise MissingArtefact(f"{path}: no similar-items table for sft.retrieved_items={k}; {why}")
    table = np.load(path)
    if table.shape[1] < k:
        raise MissingArtefact(f"{path}: {table.shape[1]} similar items per item, sft.retrieved_items asks for {k}")
    return table[:, :k]
