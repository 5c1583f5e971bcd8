"""A teacher model in the reward service: a trained SASRec (`gream baseline sasrec`, the
validation-selected one under `--tune`) scores each completion's item given the user's history.

RL on the SFT model's own data with a hit reward adds nothing MLE did not have (DESIGN.md section
11); a separately trained scorer that ranks better than the policy brings information it lacks.
Each replica loads the scorer once; a request carries one history (item ids) per completion, and
the reply gives log p_T(item | history) over the whole catalogue and the item's 0-based catalogue
rank. The reward forms built from them are pure functions (functions.teacher_reward).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cluster.errors import BadRequest, MissingArtefact
from sft.sasrec import SASRec, SasrecConfig, check_settings
from sft.sasrec_scorer import SCORER_META, SCORER_WEIGHTS


def check_teacher(folder: str | Path, num_items: int, dataset: str, where: str = "rl.teacher.path") -> dict:
    """scorer.json of `folder`, refused (exit 2 naming the file) unless it was trained on this
    catalogue: the same data set and number of items."""
    meta_path = Path(folder) / SCORER_META
    if not meta_path.exists():
        raise BadRequest(f"{where}: {meta_path} does not exist; point it at a `gream baseline sasrec` folder "
                         "(it holds model.safetensors and scorer.json)")
    try:
        meta = json.loads(meta_path.read_text())
        trained_on = (meta["dataset"], int(meta["num_items"]))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BadRequest(f"{where}: {meta_path} is not a readable scorer description ({exc})") from exc
    if trained_on != (dataset, num_items):
        raise BadRequest(f"{where}: {meta_path} was trained on {trained_on[0]} with {trained_on[1]} items; this "
                         f"run's catalogue is {dataset} with {num_items} items")
    return meta


def load_scorer(folder: str | Path) -> tuple[SASRec, dict]:
    """A SASRec saved by `gream baseline sasrec` (save_scorer), in eval mode, and its scorer.json."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path = folder / SCORER_META
    if not meta_path.exists():
        raise MissingArtefact(f"{meta_path}: no trained SASRec here; run `gream baseline sasrec SPEC` (its "
                              "baselines/sasrec folder holds model.safetensors and scorer.json)")
    try:
        meta = json.loads(meta_path.read_text())
        cfg = SasrecConfig(**check_settings(meta["config"], str(meta_path)))
        model = SASRec(int(meta["num_items"]), int(meta["max_len"]), cfg)
        model.load_state_dict(load_file(str(folder / SCORER_WEIGHTS)))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, RuntimeError,
            SafetensorError) as exc:
        raise BadRequest(f"{folder}: not a SASRec scorer that loads ({type(exc).__name__}: {exc}); "
                         "re-run `gream baseline sasrec`") from exc
    return model.eval(), meta


class Teacher:
    def __init__(self, folder: str | Path, num_items: int, dataset: str):
        self.meta = check_teacher(folder, num_items, dataset)
        self.folder = str(folder)
        self.model, _ = load_scorer(folder)
        self.pad, self.max_len = self.model.pad, self.model.max_len

    def score(self, histories: Sequence[Sequence[int]], items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log p_T(item | history), the item's 0-based rank in the catalogue under T) per row;
        (-inf, -1) where `items` is -1 (the completion names no item). Each distinct history runs once."""
        items = np.asarray(items, dtype=np.int64)
        rows: dict[tuple[int, ...], int] = {}
        which = np.array([rows.setdefault(tuple(h[-self.max_len:]), len(rows)) for h in histories], dtype=np.int64)
        seqs = torch.full((len(rows), self.max_len), self.pad, dtype=torch.long)
        for history, r in rows.items():
            if history:
                seqs[r, -len(history):] = torch.as_tensor(history)
        with torch.no_grad():
            scores = self.model.scores(seqs)[torch.as_tensor(which)]
            logp = torch.log_softmax(scores.float(), dim=-1)
        named = items >= 0
        pick = torch.as_tensor(np.where(named, items, 0))[:, None]
        own = scores.gather(1, pick)
        rank = (scores > own).sum(1).numpy()
        return (np.where(named, logp.gather(1, pick)[:, 0].numpy(), -np.inf),
                np.where(named, rank, -1).astype(np.int64))
