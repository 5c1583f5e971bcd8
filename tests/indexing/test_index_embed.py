"""Embeddings: masked mean pooling of a causal LM (a small randomly initialised Llama saved as a real
Hugging Face folder, with MiniLM's tokenizer), the disk cache, and the row checks."""
import shutil

import numpy as np
import pytest
import torch

from indexing.embed import (
    CausalLMEncoder,
    EmbeddingError,
    cache_file,
    check_rows,
    embed_texts,
    load_encoder,
    minilm_path,
)


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_llama")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_path() / name, folder / name)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


class Counting:
    """Passes through to a real encoder and records what it was asked to encode."""

    def __init__(self, inner):
        self.inner, self.name, self.seen = inner, inner.name, []

    def encode(self, texts):
        self.seen.extend(texts)
        return self.inner.encode(texts)


def test_mean_pooling_ignores_padding(lm_folder):
    enc = load_encoder(str(lm_folder), "cpu", "float32")
    assert isinstance(enc, CausalLMEncoder)
    short, long = "red stapler", "a long description of a blue office chair with wheels and armrests"
    alone = enc.encode([short])[0]
    padded = enc.encode([short, long])[0]  # the short row is padded in this batch
    np.testing.assert_allclose(alone, padded, rtol=1e-4, atol=1e-5)
    batch = enc.tokenizer([short], return_tensors="pt")
    with torch.inference_mode():
        hidden = enc.model(**batch).last_hidden_state[0]
    np.testing.assert_allclose(alone, hidden.mean(0).numpy(), rtol=1e-4, atol=1e-5)


def test_cache_encodes_each_text_once(lm_folder, tmp_path):
    enc = Counting(load_encoder(str(lm_folder), "cpu", "float32"))
    texts = ["pen", "paper clips", "pen", "desk lamp"]
    first = embed_texts(texts, enc, batch_size=2, cache_dir=tmp_path)
    assert sorted(enc.seen) == ["desk lamp", "paper clips", "pen"]  # duplicates encoded once
    np.testing.assert_array_equal(first[0], first[2])
    assert cache_file(tmp_path, enc.name).exists()
    enc.seen.clear()
    second = embed_texts(["desk lamp", "stapler", "pen"], enc, batch_size=2, cache_dir=tmp_path)
    assert enc.seen == ["stapler"]
    np.testing.assert_array_equal(second[0], first[3])
    np.testing.assert_array_equal(second[2], first[0])


def test_bad_inputs_and_rows_are_errors(lm_folder, tmp_path):
    enc = load_encoder(str(lm_folder), "cpu", "float32")
    with pytest.raises(EmbeddingError, match="text 1 is empty"):
        embed_texts(["pen", "  "], enc, batch_size=2)
    with pytest.raises(EmbeddingError, match=r"not finite \(NaN/inf\), first rows \[12\]"):
        check_rows(np.array([[1.0, 2.0], [np.nan, 0.0]]), row_ids=[5, 12])
    with pytest.raises(EmbeddingError, match=r"all zero, first rows \[0\]"):
        check_rows(np.zeros((1, 3)))
    with pytest.raises(EmbeddingError, match="neither 'minilm' nor a Hugging Face model folder"):
        load_encoder(str(tmp_path), "cpu")
