"""A trained SASRec saved as a scorer: model.safetensors + scorer.json beside its eval.json, what a
teacher loads: RL's teacher reward (rl_system/reward/teacher.py), SFT's distillation (sft/distill.py)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from cluster.errors import BadRequest, MissingArtefact
from sft.sasrec import SASRec, SasrecConfig, check_settings

SCORER_WEIGHTS = "model.safetensors"
SCORER_META = "scorer.json"


def save_scorer(folder: Path, model, cfg, dataset: str, num_items: int) -> None:
    """The trained model beside its eval.json, with what a loader checks: settings, catalogue size
    and data set."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / SCORER_WEIGHTS))
    (folder / SCORER_META).write_text(json.dumps({"config": asdict(cfg), "num_items": num_items,
                                                  "max_len": model.max_len, "dataset": dataset}, indent=1))


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
