"""Backbones: the embedded tiny Qwen3 (built offline), imported SmolLM2, or any Hugging Face folder,
and the SID vocabulary extension that SFT applies on top.

Every folder this module writes is a plain `save_pretrained` folder that transformers and vLLM both
load, so later stages never care where a backbone came from.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Iterable

import torch

from cluster.errors import GreamError
from cluster.logs import fields
from cluster.spec import JobSpec
from sft.hf_folder import save_backbone
from sft.prompts import item_token, template_corpus

log = logging.getLogger(__name__)

# `<|im_start|>`/`<|im_end|>` make the template Qwen/ChatML-shaped, so prompts render the same way
# for the embedded model, SmolLM2 and Qwen checkpoints.
PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
REASONING_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")
EMBEDDED_PREFIX = "embedded:"
# vLLM-CPU attention kernels support a fixed set of head sizes; 64 is one of them.
HEAD_DIM = 64
VOCAB_MULTIPLE = 64
MAX_POSITIONS = 2048
BUILD_MARKER = "gream_build.json"
TEMPLATE_WEIGHT = 500


class BackboneError(GreamError):
    """A backbone that cannot be built or loaded."""


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def item_corpus(items: dict[int, dict], max_chars: int = 1000) -> list[str]:
    """Item text fields as tokenizer training text; long descriptions are cut, they add nothing new."""
    texts = []
    for item_fields in items.values():
        for key in ("title", "brand", "categories", "description"):
            value = item_fields.get(key)
            if isinstance(value, list):
                value = ", ".join(str(v) for v in value)
            if isinstance(value, str) and value.strip():
                texts.append(value[:max_chars])
    return texts


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Byte-level BPE trained locally, wrapped as a fast tokenizer with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=IM_END, pad_token=PAD_TOKEN, unk_token=None, model_max_length=MAX_POSITIONS)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_qwen3_config(vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, pad_id: int, eos_id: int):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=round_up(vocab_size, VOCAB_MULTIPLE),
        hidden_size=hidden_size,
        intermediate_size=3 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=None,
        dtype="float32",
    )


def build_embedded(spec: JobSpec, out_dir: str | Path) -> Path:
    """Build the default backbone offline: a small, seeded Qwen3 with a BPE tokenizer trained on the
    dataset's item texts and the prompt templates."""
    from transformers import Qwen3ForCausalLM

    from indexing.dataset import load_from_spec

    out_dir = Path(out_dir)
    m = spec.model
    ds = load_from_spec(spec)
    # Templates are repeated so BPE learns their words as whole tokens: prompts stay short.
    texts = item_corpus(ds.items) + template_corpus() * TEMPLATE_WEIGHT
    tokenizer = train_tokenizer(texts, m.bpe_vocab)
    config = tiny_qwen3_config(
        len(tokenizer), m.hidden_size, m.num_layers, m.num_heads, tokenizer.pad_token_id, tokenizer.eos_token_id)
    torch.manual_seed(m.seed)
    model = Qwen3ForCausalLM(config)
    save_backbone(model, tokenizer, out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("built embedded backbone", extra=fields(dir=str(out_dir), params=n_params, vocab=len(tokenizer),
                                                     texts=len(texts)))
    return out_dir


def _mean_description_rows(emb: torch.Tensor, tokenizer, descriptions: dict[str, str], tokens: list[str]):
    """Mean embedding of each token's description, for tokens that have one."""
    rows = {}
    for token in tokens:
        text = descriptions.get(token)
        if not text:
            continue
        ids = [i for i in tokenizer(text, add_special_tokens=False)["input_ids"] if i < emb.shape[0]]
        if ids:
            rows[token] = emb[ids].mean(0)
    return rows


@torch.no_grad()
def add_sid_tokens(model, tokenizer, sid_tokens: list[str], descriptions: dict[str, str] | None = None,
                   seed: int = 0) -> dict[str, int]:
    """Add SID tokens and the reasoning tags as whole tokens and initialise their embedding rows.

    A new row points along the mean embedding of the token's description when one is given
    (e.g. the titles of the items under a code), otherwise along the mean of the existing rows plus
    per-dimension noise at the existing spread; either way it is scaled to the typical distance of
    an existing row from the mean, so new tokens start at the same scale as the ones the model knows.
    The matrix is padded to a multiple of 64. Returns token -> id for all SID and reasoning tokens.
    """
    from tokenizers import AddedToken

    wanted = list(dict.fromkeys([*sid_tokens, *REASONING_TOKENS]))
    bad = [t for t in wanted if not t or any(c.isspace() for c in t)]
    if bad:
        raise BackboneError(f"SID token {bad[0]!r} is empty or contains whitespace; expected e.g. '<a_12>'")
    vocab = tokenizer.get_vocab()
    new = [t for t in wanted if t not in vocab]
    n_known = len(tokenizer)
    emb_in = model.get_input_embeddings().weight
    # Only rows of real tokens count; a checkpoint's padding rows were never trained.
    known = emb_in[: min(n_known, emb_in.shape[0])].float()
    mean, std = known.mean(0), known.std(0)
    scale = (known - mean).norm(dim=1).mean()
    from_desc = _mean_description_rows(known, tokenizer, descriptions or {}, new)

    # Non-special: vLLM skips special tokens when detokenising, and SIDs must survive into the text.
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in new])
    out_emb = model.get_output_embeddings()
    tied = out_emb is not None and out_emb.weight is emb_in
    out_mean = None if tied or out_emb is None else out_emb.weight[:n_known].float().mean(0)
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=VOCAB_MULTIPLE, mean_resizing=False)

    gen = torch.Generator().manual_seed(seed)
    emb = model.get_input_embeddings().weight
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in wanted}
    for token in new:
        direction = from_desc.get(token)
        direction = direction - mean if direction is not None else std * torch.randn(mean.shape, generator=gen)
        emb[ids[token]] = (mean + direction * (scale / direction.norm().clamp_min(1e-12))).to(emb.dtype)
    # Rows past the tokenizer (the multiple-of-64 padding) never appear as input; as outputs they
    # should score like an average token, not like noise.
    emb[len(tokenizer):] = mean.to(emb.dtype)
    if out_mean is not None:
        model.get_output_embeddings().weight[n_known:] = out_mean.to(emb.dtype)
    model.config.vocab_size = emb.shape[0]
    log.info("added tokens", extra=fields(new=len(new), vocab=len(tokenizer), rows=emb.shape[0],
                                          from_description=len(from_desc)))
    return ids


def add_item_tokens(model, tokenizer, index, seed: int = 0) -> dict[int, int]:
    """One `<item_N>` token per item of `index` (sft.history_input: item), after the SID tokens: each
    row starts along the mean of its SID codes' rows (add_sid_tokens, the SID as the description), so
    an item starts where its codes put it and can move off on its own. Returns item -> token id; the
    ids are one run in item order, which the item softmax (sft/sid_losses.py) reads as a slice."""
    items = index.items()
    tokens = [item_token(i) for i in items]
    ids = add_sid_tokens(model, tokenizer, tokens, {item_token(i): index.text(i) for i in items}, seed)
    out = {i: ids[t] for i, t in zip(items, tokens)}
    first = out[items[0]] if items else 0
    if list(out.values()) != list(range(first, first + len(items))):
        raise BackboneError(f"{tokenizer.name_or_path}: the item tokens do not hold consecutive ids in item order "
                            "(a backbone that already had some of them); start SFT from a backbone without item tokens")
    return out


def _build_marker(spec: JobSpec) -> dict:
    return {"backbone": spec.model.backbone, "hash": spec.section_hash("model", "data")}


def resolve_backbone(spec: JobSpec) -> Path:
    """The backbone folder for this spec: an embedded one is built under `<run_dir>/model/` once
    (rebuilt when the model or data section changes); a folder is checked and returned."""
    name = spec.model.backbone
    if not name.startswith(EMBEDDED_PREFIX):
        path = Path(name)
        if not (path / "config.json").exists():
            raise BackboneError(
                f"model.backbone: '{name}' is neither '{EMBEDDED_PREFIX}<name>' nor a Hugging Face folder "
                "with a config.json")
        return path
    kind = name[len(EMBEDDED_PREFIX):]
    if kind not in EMBEDDED:
        raise BackboneError(f"model.backbone: unknown embedded backbone '{kind}'; expected one of {sorted(EMBEDDED)}")
    out_dir = spec.layout.stage("model")
    marker = out_dir / BUILD_MARKER
    wanted = _build_marker(spec)
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return out_dir
    EMBEDDED[kind](spec, out_dir)
    marker.write_text(json.dumps(wanted))
    return out_dir


def _import_smollm2(spec: JobSpec, out_dir: Path) -> Path:
    from sft.import_smollm2 import cached_smollm2

    # The GGUF is dequantized once per machine (the model cache, tens of seconds); each run gets a
    # copy of its own, which SFT extends with SID tokens.
    shutil.copytree(cached_smollm2(), out_dir, dirs_exist_ok=True)
    return out_dir


EMBEDDED = {"tiny-qwen3": build_embedded, "smollm2-135m": _import_smollm2}
