"""Embedded backbone and SID vocabulary extension, on the real Office data and index."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cluster.spec import JobSpec
from indexing.dataset import Example
from indexing.sid import SidIndex, read_index_codes
from sft.backbone import (
    BUILD_MARKER,
    REASONING_TOKENS,
    VOCAB_MULTIPLE,
    BackboneError,
    add_item_tokens,
    add_sid_tokens,
    build_embedded,
    resolve_backbone,
)
from sft.hf_folder import load_backbone, save_backbone
from sft.prompts import HistoryWriter, build_prompts, item_token, render_seqrec_prompt

REPO = Path(__file__).resolve().parents[2]
OFFICE = REPO / "data/office"


def small_spec(run_dir: Path, **model) -> JobSpec:
    return JobSpec(name="bb", run_dir=str(run_dir), data={"path": str(OFFICE)},
                   model={"hidden_size": 64, "num_layers": 1, "num_heads": 1, "bpe_vocab": 400, **model})


@pytest.fixture(scope="module")
def office_sid_vocab() -> list[str]:
    # The bundled UniTok file has a few duplicate SIDs; the vocabulary is what matters here.
    codes = read_index_codes(OFFICE / "Office.unitok5.index.json")
    return SidIndex({0: next(iter(codes.values()))}, level_sizes=tuple(
        max(c[level] for c in codes.values()) + 1 for level in range(5))).vocab()


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bb")
    return build_embedded(small_spec(root), root / "model")


def test_embedded_folder_is_a_chatml_qwen3(base_dir):
    model, tok = load_backbone(base_dir)
    cfg = model.config
    assert cfg.model_type == "qwen3" and cfg.head_dim == 64 and cfg.tie_word_embeddings
    assert cfg.vocab_size % VOCAB_MULTIPLE == 0 and cfg.vocab_size >= len(tok)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert model.generation_config.eos_token_id == tok.eos_token_id
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_build_is_seeded(tmp_path, base_dir):
    again = build_embedded(small_spec(tmp_path), tmp_path / "model")
    a, _ = load_backbone(base_dir)
    b, _ = load_backbone(again)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    c, _ = load_backbone(build_embedded(small_spec(tmp_path, seed=1), tmp_path / "other"))
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_sid_tokens_are_whole_tokens(tmp_path, base_dir, office_sid_vocab):
    model, tok = load_backbone(base_dir)
    before = len(tok)
    ids = add_sid_tokens(model, tok, office_sid_vocab)
    assert set(ids) == set(office_sid_vocab) | set(REASONING_TOKENS)
    assert len(set(ids.values())) == len(ids) and min(ids.values()) >= before
    for token, i in ids.items():
        assert tok(token, add_special_tokens=False)["input_ids"] == [i]
    sid = "<a_12><b_200><c_7><d_0><e_3>"
    enc = tok(f"<answer>{sid}</answer>", add_special_tokens=False)["input_ids"]
    assert enc == [ids["<answer>"], *(ids[t] for t in ("<a_12>", "<b_200>", "<c_7>", "<d_0>", "<e_3>")), ids["</answer>"]]
    # SIDs are not special: decoding with skip_special_tokens (vLLM's default) keeps them.
    assert tok.decode(enc, skip_special_tokens=True) == f"<answer>{sid}</answer>"
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows % VOCAB_MULTIPLE == 0 and rows >= len(tok) and model.config.vocab_size == rows

    save_backbone(model, tok, tmp_path / "sid")
    reloaded, tok2 = load_backbone(tmp_path / "sid")
    assert tok2(sid, add_special_tokens=False)["input_ids"] == tok(sid, add_special_tokens=False)["input_ids"]
    prompt = render_seqrec_prompt(tok2, [sid, sid])
    ids_prompt = tok2(prompt, return_tensors="pt")
    logits = reloaded(**ids_prompt).logits
    assert logits.shape[-1] == rows and torch.isfinite(logits).all()


def test_new_rows_match_the_scale_of_existing_rows(base_dir):
    model, tok = load_backbone(base_dir)
    old = model.get_input_embeddings().weight[: len(tok)].detach().clone()
    mean = old.mean(0)
    old_dist = (old - mean).norm(dim=1)
    ids = add_sid_tokens(model, tok, ["<a_0>", "<a_1>"], descriptions={"<a_0>": "calculator paper stapler"})
    emb = model.get_input_embeddings().weight.detach()
    for token in ("<a_0>", "<a_1>", "<think>"):
        dist = (emb[ids[token]] - mean).norm()
        assert torch.isclose(dist, old_dist.mean(), rtol=1e-4), token
    # A described token points where its description's embeddings point.
    desc_ids = tok("calculator paper stapler", add_special_tokens=False)["input_ids"]
    desc_dir = old[desc_ids].mean(0) - mean
    cos = torch.nn.functional.cosine_similarity(emb[ids["<a_0>"]] - mean, desc_dir, dim=0)
    assert cos > 0.999
    # Padding rows score like an average token.
    assert torch.allclose(emb[len(tok):], mean.expand(emb.shape[0] - len(tok), -1))


@torch.no_grad()
def test_item_tokens_start_along_their_sid_codes_and_prompts_write_them(base_dir):
    model, tok = load_backbone(base_dir)
    index = SidIndex({3: (0, 1), 8: (1, 1), 5: (1, 0)}, level_sizes=(2, 2))
    sid_ids = add_sid_tokens(model, tok, index.vocab())
    assert not HistoryWriter.for_model(tok, index).item_tokens
    known = model.get_input_embeddings().weight[: len(tok)].clone()
    ids = add_item_tokens(model, tok, index)
    assert list(ids) == [3, 5, 8] and list(ids.values()) == list(range(ids[3], ids[3] + 3))
    emb, mean = model.get_input_embeddings().weight, known.mean(0)
    for item, token in ids.items():
        codes = known[[sid_ids[t] for t in index.tokens(item)]].mean(0)
        assert torch.nn.functional.cosine_similarity(emb[token] - mean, codes - mean, dim=0) == pytest.approx(1.0, abs=1e-5)
    writer = HistoryWriter.for_model(tok, index)
    assert writer.item_tokens and writer.history([8, 3]) == [item_token(8), item_token(3)]
    prompt = build_prompts(tok, index, [Example(0, (8, 3), 5)], False).prompt_ids[0]
    assert [t for t in prompt if t in ids.values()] == [ids[8], ids[3]]
    assert not set(prompt) & {sid_ids[t] for t in index.vocab()}  # no SID in the history


def test_add_sid_tokens_rejects_bad_tokens(base_dir):
    model, tok = load_backbone(base_dir)
    with pytest.raises(BackboneError, match="whitespace"):
        add_sid_tokens(model, tok, ["<a 1>"])


def test_resolve_backbone_builds_once_and_checks_folders(tmp_path):
    spec = small_spec(tmp_path / "run")
    path = resolve_backbone(spec)
    assert path == spec.layout.stage("model") and (path / BUILD_MARKER).exists()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_backbone(spec) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert resolve_backbone(small_spec(tmp_path / "x", backbone=str(path))) == path
    with pytest.raises(BackboneError, match="neither"):
        resolve_backbone(small_spec(tmp_path / "x", backbone=str(tmp_path / "missing")))
    with pytest.raises(BackboneError, match="unknown embedded backbone"):
        resolve_backbone(small_spec(tmp_path / "x", backbone="embedded:gpt5"))
