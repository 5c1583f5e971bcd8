"""A trained SASRec saved as a scorer: model.safetensors + scorer.json beside its eval.json, what RL's
teacher reward (rl_system/reward/teacher.py) loads."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

SCORER_WEIGHTS = "model.safetensors"
SCORER_META = "scorer.json"


def save_scorer(folder: Path, model, cfg, dataset: str, num_items: int) -> None:
    """The trained model beside its eval.json, with what a loader checks: settings, catalogue size
    and data set (RL's teacher reward, rl_system/reward/teacher.py, loads it)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / SCORER_WEIGHTS))
    (folder / SCORER_META).write_text(json.dumps({"config": asdict(cfg), "num_items": num_items,
                                                  "max_len": model.max_len, "dataset": dataset}, indent=1))
