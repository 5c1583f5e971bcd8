"""`gream export RUN --step N OUT`: one self-contained Hugging Face folder to serve a trained policy.

The folder holds the model (safetensors + config + generation config), the tokenizer with its SID
tokens, the run's SID index (`NAME.index.json`) and the trie's token-id table (`sid_constraint.json`,
the file the rollout engines read), plus `gream_export.json` saying where it came from (and the
run's `spec.yaml`, which `gream serve --stage export` reads). vLLM loads
it as a model folder; `RolloutPool`/`EngineConfig` take it as a model dir and find the constraint
table beside the weights.

Weights come from the RL checkpoint of step N (`--step best`: the one `rl/checkpoints/best.json`
names, see `CheckpointManager`): DeepSpeed's own consolidation
(`zero_to_fp32`) merges the fp32 master weights of every ZeRO rank, which are loaded into the
architecture of the model RL started from (`sft/model`, else `rl/model`) and cast to its dtype.
`--step sft` exports the SFT model itself.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from cluster.checkpoint import BEST_FILE, Checkpoint, CheckpointManager
from cluster.errors import GreamError
from cluster.logs import fields
from cluster.run_layout import SPEC_FILE, RunLayout

log = logging.getLogger(__name__)

EXPORT_MARKER = "gream_export.json"
DS_TAG = "learner"  # the tag Learner.save_checkpoint writes under
SFT = "sft"
BEST = "best"


class ExportError(GreamError):
    """An export that cannot be made as asked."""


def parse_step(text: str) -> int | str:
    """`--step`: a checkpoint step number, 'best' or 'sft'."""
    if text in (SFT, BEST):
        return text
    if not text.isdigit():
        raise ExportError(f"--step must be a checkpoint step number, '{BEST}' or '{SFT}', got {text!r}")
    return int(text)


def base_model_dir(run_dir: Path) -> Path:
    """The folder whose config and tokenizer the RL learner was built from."""
    for stage in ("sft", "rl"):
        folder = RunLayout(run_dir).model(stage)
        if (folder / "config.json").exists():
            return folder
    raise ExportError(f"{run_dir}: neither sft/model nor rl/model holds a config.json; "
                      "export needs the architecture and tokenizer RL trained (run the sft stage first)")


def index_file(run_dir: Path) -> Path:
    found = sorted(RunLayout(run_dir).index_files())
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(p.name for p in found)})"
        raise ExportError(f"{run_dir / 'index'}: found {what} NAME.index.json files, expected exactly one "
                          "(the SID index the run trained on)")
    return found[0]


def find_checkpoint(run_dir: Path, step: int | str) -> Checkpoint:
    """The complete checkpoint of `step` (a number or 'best') whose files match their hashes; any
    other is refused."""
    root = RunLayout(run_dir).checkpoints
    ckpts = CheckpointManager(root, keep=1 << 30) if root.is_dir() else None
    if step == BEST:
        found = ckpts.best() if ckpts else None
        if found is None:
            raise ExportError(f"{root / BEST_FILE}: no best checkpoint recorded, or the one it names is incomplete; "
                              "export a step number instead")
    else:
        complete = ckpts.complete() if ckpts else []
        found = next((c for c in complete if c.step == step), None)
        if found is None:
            steps = ", ".join(str(c.step) for c in complete) or "none"
            raise ExportError(f"{root}: no complete checkpoint for step {step}; complete checkpoints: {steps}")
    if (problem := ckpts.verify(found)) is not None:
        raise ExportError(f"{found.path}: {problem}; the checkpoint is damaged, export another step")
    return found


def consolidated_state_dict(learner_dir: Path) -> dict:
    """Full fp32 state dict from a DeepSpeed ZeRO checkpoint written by `Learner.save_checkpoint`."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    if not (learner_dir / DS_TAG).is_dir():
        raise ExportError(f"{learner_dir}: no DeepSpeed checkpoint tag '{DS_TAG}' "
                          "(expected the folder Learner.save_checkpoint writes)")
    return get_fp32_state_dict_from_zero_checkpoint(str(learner_dir), tag=DS_TAG)


def load_policy(base: Path, state: dict):
    """`base`'s architecture with `state`'s weights, in `base`'s dtype."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(base)
    dtype = config.dtype if isinstance(config.dtype, torch.dtype) else getattr(torch, str(config.dtype or "float32"))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.tie_weights()
    # A tied output matrix may be stored under one name only; anything else missing is a mismatch.
    tied = {name for name in missing if _is_tied(model, name)}
    if set(missing) - tied or unexpected:
        raise ExportError(f"checkpoint does not fit the architecture of {base}: "
                          f"missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
    if (base / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(base)
    return model.to(dtype).eval()


def _is_tied(model, name: str) -> bool:
    out = model.get_output_embeddings()
    return (out is not None and out.weight is model.get_input_embeddings().weight
            and name.endswith("weight") and model.get_submodule(name.rsplit(".", 1)[0]) is out)


def export(run_dir: str | Path, step: int | str, out: str | Path) -> Path:
    """Write the export folder `out` (which must not exist yet or be empty); returns it."""
    from transformers import AutoTokenizer

    from indexing.sid import SidIndex
    from rl_system.rollout.pool import constraint_table_path

    run_dir, out = Path(run_dir), Path(out)
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such run directory")
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out}: exists and is not empty; export into a new folder")
    base, idx = base_model_dir(run_dir), index_file(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(base)
    provenance: dict = {"run_dir": str(run_dir.resolve()), "base_model": str(base.resolve()), "created": time.time()}
    if step == SFT:
        source = RunLayout(run_dir).model("sft")
        if not (source / "config.json").exists():
            raise ExportError(f"{source}: no SFT model to export")
        provenance["source"] = "sft"
    else:
        ckpt = find_checkpoint(run_dir, step)
        provenance.update(source="rl", step=ckpt.step, checkpoint=str(ckpt.path.resolve()),
                          weight_version=ckpt.meta.get("weight_version"), spec_hash=ckpt.meta.get("spec_hash"),
                          metrics=ckpt.meta.get("metrics"))

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if step == SFT:
            # Already a served folder: copied as is, so the bytes are the ones SFT evaluated.
            shutil.copytree(source, tmp, dirs_exist_ok=True)
        else:
            model = load_policy(base, consolidated_state_dict(ckpt.path / "learner"))
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        shutil.copy2(idx, tmp / idx.name)
        if RunLayout(run_dir).spec_file.exists():  # gream serve --stage export reads it
            shutil.copy2(RunLayout(run_dir).spec_file, tmp / SPEC_FILE)
        table = constraint_table_path(tmp, SidIndex.load(idx), tokenizer)
        provenance.update(index=idx.name, constraint=table.name)
        (tmp / EXPORT_MARKER).write_text(json.dumps(provenance, indent=1))
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported", extra=fields(out=str(out), source=provenance["source"], step=provenance.get("step")))
    return out
