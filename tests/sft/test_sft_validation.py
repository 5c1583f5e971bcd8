"""SFT validation: the torch beam against brute-force scoring of every item, and the fixed sample."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from indexing.dataset import Example
from indexing.sid import SidIndex
from indexing.trie import SidTrie
from sft.hf_beam import beam_search, constrained_beam
from sft.hf_folder import load_backbone
from sft.metrics import metrics_from_ranks, rank_of
from sft.prompts import build_prompts
from sft.validation import Validator, validation_sample

# Seven items on three levels, prefixes shared at both inner levels.
CODES = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [1, 2, 3], [2, 0, 1], [2, 1, 1]])
EXAMPLES = [Example(0, (0, 1), 2), Example(1, (3, 4, 5, 6, 0), 1), Example(2, (6,), 5)]


@pytest.fixture(scope="module")
def sharp_model(tiny_policy):
    """The untrained tiny policy with its output layer scaled up: clear preferences, no near-ties."""
    model, tok = load_backbone(tiny_policy.model_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head.add_(torch.randn_like(head) * 0.5)
    return model.eval(), tok


def brute_force(model, prompt: list[int], trie: SidTrie, sids: list[list[int]]) -> list[float]:
    """Each SID's summed constrained log-probability from one full forward pass of prompt + SID."""
    scores = []
    for sid in sids:
        with torch.no_grad():
            logits = model(torch.tensor([prompt + sid[:-1]])).logits[0, len(prompt) - 1:]
        states = trie.states_for_prefixes(torch.tensor([sid[:d] + [0] * (len(sid) - d) for d in range(len(sid))]),
                                          torch.arange(len(sid)))
        logp = torch.log_softmax(trie.apply(logits, states), -1)
        scores.append(float(logp[torch.arange(len(sid)), torch.tensor(sid)].sum()))
    return scores


@pytest.fixture(scope="module")
def toy(sharp_model):
    """The sharp model, the seven-item trie, each item's SID token ids and the three prompts."""
    model, tok = sharp_model
    index = SidIndex.from_array(CODES)
    trie = SidTrie.from_index(index, tok.get_vocab(), model.config.vocab_size, [tok.eos_token_id])
    sids = [tok.convert_tokens_to_ids(index.tokens(i)) for i in index.items()]
    prompts = build_prompts(tok, index, EXAMPLES, reasoning=False).prompt_ids
    return model, tok, trie, sids, prompts


def test_beam_is_the_brute_force_ranking_when_it_keeps_every_item(toy):
    model, tok, trie, sids, prompts = toy
    assert len({len(p) for p in prompts}) == 3  # left padding is exercised
    full = constrained_beam(model, prompts, trie, 7, tok.pad_token_id, torch.device("cpu"))
    narrow = constrained_beam(model, prompts, trie, 3, tok.pad_token_id, torch.device("cpu"))
    full_rows, full_scores, narrow_rows, narrow_scores = full.rows, full.scores, narrow.rows, narrow.scores
    for p, prompt in enumerate(prompts):
        expected = np.array(brute_force(model, prompt, trie, sids))
        order = np.argsort(-expected)
        assert full_rows[p].tolist() == order.tolist()  # width = catalogue: the exact ranking
        np.testing.assert_allclose(full_scores[p].numpy(), expected[order], rtol=1e-4, atol=1e-4)
        # Narrower: distinct real SIDs, scored as brute force scores them, best first.
        rows = narrow_rows[p].tolist()
        assert len(set(rows)) == 3 and min(rows) >= 0
        np.testing.assert_allclose(narrow_scores[p].numpy(), expected[rows], rtol=1e-4, atol=1e-4)
        assert narrow_scores[p].tolist() == sorted(narrow_scores[p].tolist(), reverse=True)
        # Each beam carries its SID's tokens and their constrained log-probabilities.
        assert narrow.tokens[p].tolist() == [sids[r] for r in rows]
        np.testing.assert_allclose(narrow.token_logprobs[p].sum(-1).numpy(), narrow_scores[p].numpy(), rtol=1e-6)
    # More beams than SIDs: the rest are marked, never invented.
    beams = constrained_beam(model, prompts[:1], trie, 9, tok.pad_token_id, torch.device("cpu"))
    rows, scores = beams.rows, beams.scores
    assert sorted(rows[0, :7].tolist()) == list(range(7)) and rows[0, 7:].tolist() == [-1, -1]
    assert torch.isinf(scores[0, 7:]).all()


def test_validator_ranks_are_the_beam_positions_of_the_targets(sharp_model):
    model, tok = sharp_model
    index = SidIndex.from_array(CODES)
    validator = Validator(tok, index, EXAMPLES, [1, 5], model.config.vocab_size)
    ranks = validator.ranks(model, torch.device("cpu"))
    rows = constrained_beam(model, validator.prompts.prompt_ids, validator.trie, 5, tok.pad_token_id,
                            torch.device("cpu")).rows
    items = index.items()
    assert ranks.tolist() == [rank_of([items[r] for r in row], ex.target) for row, ex in zip(rows.tolist(), EXAMPLES)]
    assert validator.score(model, torch.device("cpu")) == metrics_from_ranks(ranks, [1, 5])


def test_beam_under_a_prefix_ranks_the_sids_below_it_by_brute_force(toy):
    model, tok, trie, sids, prompts = toy
    head = sids[0][:1]  # level-a code 0: items 0, 1, 2
    beams = constrained_beam(model, prompts, trie, 5, tok.pad_token_id, torch.device("cpu"), prefixes=[head] * 3)
    for p, prompt in enumerate(prompts):
        below = [r for r, s in enumerate(sids) if s[:1] == head]
        whole = np.array(brute_force(model, prompt, trie, [sids[r] for r in below]))
        order = [below[i] for i in np.argsort(-whole)]
        assert beams.rows[p, :3].tolist() == order and beams.rows[p, 3:].tolist() == [-1, -1]
        assert all(t[0] == head[0] for t in beams.tokens[p, :3].tolist())
        assert beams.token_logprobs[p, :3, 0].tolist() == [0.0] * 3  # the prefix counts 0
        # Scores differ as the whole SIDs' do: the prefix's own log-probability is common to all.
        np.testing.assert_allclose((beams.scores[p, :3] - beams.scores[p, 0]).numpy(),
                                   np.sort(whole)[::-1] - whole.max(), atol=1e-4)
    # A prefix outside the trie names nothing.
    nowhere = constrained_beam(model, prompts[:1], trie, 3, tok.pad_token_id, torch.device("cpu"),
                               prefixes=[[tok.eos_token_id]])
    assert nowhere.rows.tolist() == [[-1, -1, -1]] and torch.isinf(nowhere.scores).all()


def test_beam_search_batches_by_length_and_answers_in_the_given_order(toy):
    model, tok, trie, _, prompts = toy
    prompts = prompts * 3
    one_by_one = [constrained_beam(model, [p], trie, 4, tok.pad_token_id, torch.device("cpu")) for p in prompts]
    together = beam_search(model, prompts, trie, 4, tok.pad_token_id, torch.device("cpu"), batch=2)
    assert together.rows.tolist() == [b.rows[0].tolist() for b in one_by_one]
    np.testing.assert_allclose(together.scores.numpy(), torch.cat([b.scores for b in one_by_one]).numpy(), atol=1e-5)
    # A model whose logits are more than its output layer (soft-capping here) takes the whole-vocabulary path.
    model.config.final_logit_softcapping = 30.0
    try:
        whole = beam_search(model, prompts, trie, 4, tok.pad_token_id, torch.device("cpu"), batch=2)
    finally:
        del model.config.final_logit_softcapping
    assert whole.rows.tolist() == together.rows.tolist()


def test_validation_sample_is_fixed_and_in_split_order():
    examples = [Example(u, (1,), 2) for u in range(50)]
    first, again = validation_sample(examples, 10), validation_sample(examples, 10)
    assert first == again and len(first) == 10 and [e.user for e in first] == sorted(e.user for e in first)
    assert validation_sample(examples, None) == examples == validation_sample(examples, 80)


def test_torch_beam_ranks_as_the_vllm_beam_of_gream_eval(rollout_worker, tiny_policy):
    """The same model and index: sft/hf_beam.py (SFT validation) and rl_system/beam_search.py on the
    vLLM engine (gream eval) return the same SIDs with the same constrained scores."""
    import ray

    from indexing.dataset import load_dataset
    from tests.conftest import REPO

    model, tok = load_backbone(tiny_policy.model_dir)
    index = tiny_policy.index
    ds = load_dataset(REPO / "data/office", "Office")
    examples = [Example(u, tuple(ds.sequences[u][-6:-1]), ds.sequences[u][-1]) for u in sorted(ds.sequences)[:6]]
    prompts = build_prompts(tok, index, examples, reasoning=False).prompt_ids
    trie = SidTrie.from_index(index, tok.get_vocab(), model.config.vocab_size, [tok.eos_token_id])
    beams = constrained_beam(model.eval(), prompts, trie, 8, tok.pad_token_id, torch.device("cpu"))
    rows, scores = beams.rows, beams.scores
    vllm = ray.get(rollout_worker.beam.remote(prompts, 8))
    vocab = {i: t for t, i in tok.get_vocab().items()}
    items = index.items()
    for p, cands in enumerate(vllm):
        got = {items[r]: s for r, s in zip(rows[p].tolist(), scores[p].tolist())}
        want = {index.item_of([vocab[t] for t in c.token_ids]): c.logprob for c in cands}
        assert set(got) == set(want)
        assert [got[i] for i in want] == pytest.approx(list(want.values()), abs=1e-4)
