"""Trie-constrained beam search on the real engine: distinct, valid SIDs whose scores are the
constrained log-probabilities a transformers forward of the same weights gives."""
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from indexing.dataset import load_dataset
from rl_system.rollout.beam_search import forced_steps
from rl_system.rollout.constraint import ConstraintTable
from sft.prompts import render_seqrec_prompt
from tests.conftest import REPO

WIDTH = 8


@pytest.fixture(scope="module")
def beams(rollout_worker, tiny_policy):
    import ray

    tokenizer = AutoTokenizer.from_pretrained(tiny_policy.model_dir)
    ds = load_dataset(REPO / "data/office", "Office")
    users = sorted(ds.sequences)[:6]
    prompts = [tokenizer(render_seqrec_prompt(tokenizer, [tiny_policy.index.text(i) for i in ds.sequences[u][-6:-1]]),
                         add_special_tokens=False)["input_ids"] for u in users]
    return prompts, ray.get(rollout_worker.beam.remote(prompts, WIDTH))


def test_beam_returns_width_distinct_valid_sids_best_first(beams, tiny_policy):
    table = ConstraintTable.load(tiny_policy.constraint_path)
    valid = {tuple(s) for s in table.sids}
    prompts, out = beams
    assert len(out) == len(prompts)
    for cands in out:
        assert len(cands) == WIDTH
        assert len({c.token_ids for c in cands}) == WIDTH
        assert all(c.token_ids in valid for c in cands)
        scores = [c.logprob for c in cands]
        assert scores == sorted(scores, reverse=True) and scores[-1] < 0


def test_forced_steps_are_the_single_child_prefixes():
    sids = [[3, 5, 0], [3, 6, 0], [3, 6, 1], [4, 5, 0]]
    assert forced_steps(sids) == {(4,): 5, (3, 5): 0, (4, 5): 0}


@torch.no_grad()
def test_beam_scores_are_constrained_logprobs_of_the_policy(beams, tiny_policy):
    """Recompute each candidate's score with transformers: per position, log-softmax over the tokens
    the trie allows after the candidate's prefix."""
    table = ConstraintTable.load(tiny_policy.constraint_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_policy.model_dir, dtype=torch.float32).eval()
    trie = table.build_trie(model.config.vocab_size, "cpu")
    prompts, out = beams
    for prompt, cands in zip(prompts, out):
        seqs = torch.tensor([list(prompt) + list(c.token_ids) for c in cands])
        logits = model(seqs).logits[:, len(prompt) - 1: -1]  # predictions of the SID tokens
        sids = seqs[:, len(prompt):]
        total = torch.zeros(len(cands))
        for t in range(sids.shape[1]):
            states = trie.states_for_prefixes(sids[:, :t]) if t else trie.root(len(cands))
            lp = trie.apply(logits[:, t], states).log_softmax(-1)
            total += lp.gather(1, sids[:, t: t + 1]).squeeze(1)
        torch.testing.assert_close(torch.tensor([c.logprob for c in cands]), total, atol=1e-3, rtol=0)
