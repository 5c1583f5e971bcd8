"""The trie constraint's state machine on a hand-made trie, without an engine.

Vocabulary of 12: SIDs are [3, 5], [3, 6], [4, 5]; EOS = 1, <answer> = 8, </answer> = 9,
<think> = 10, </think> = 11.
"""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm import SamplingParams

from rl_system.rollout.constraint import (
    EXTRA_ARGS_KEY,
    PREFIX_KEY,
    ConstraintError,
    ConstraintTable,
    RequestConstraint,
    request_constraint,
)
from rl_system.rollout.trie_state import TrieConstraint
from rl_system.rollout.vllm_processors import TrieLogitsProcessorV2

V = 12
EOS, OPEN, CLOSE, THINK, UNTHINK = 1, 8, 9, 10, 11
TABLE = ConstraintTable(sids=[[3, 5], [3, 6], [4, 5]], eos_id=EOS, answer_open_id=OPEN, answer_close_id=CLOSE,
                        think_open_id=THINK, think_close_id=UNTHINK)
TEXT = set(range(V)) - {EOS, OPEN, CLOSE, THINK}  # what free reasoning text may write


def allowed(logits_row: torch.Tensor) -> set[int]:
    return {i for i, v in enumerate(logits_row.tolist()) if math.isfinite(v)}


def masked(c: TrieConstraint, slots: list[int]) -> list[set[int]]:
    logits = torch.zeros(len(slots), V)
    c.mask_(logits, torch.tensor(slots))
    return [allowed(r) for r in logits]


def test_direct_reasoning_and_unconstrained_slots_step_through_their_phases():
    c = TrieConstraint(TABLE, V, max_slots=4, device="cpu")
    c.reset([0, 1, 2], [RequestConstraint("direct"), RequestConstraint("reasoning"), RequestConstraint(None)])
    everything = set(range(V))
    assert masked(c, [0, 1, 2]) == [{3, 4}, {THINK}, everything]

    # slot 0 takes 3, slot 1 opens its thoughts, slot 2 anything.
    c.absorb(torch.tensor([0, 1, 2]), torch.tensor([3, THINK, 7]))
    assert masked(c, [0, 1, 2]) == [{5, 6}, TEXT, everything]
    c.absorb(torch.tensor([0, 1]), torch.tensor([6, 5]))  # a SID token inside the reasoning is fine
    assert masked(c, [0, 1]) == [{EOS}, TEXT]  # slot 0 completed [3, 6]: direct mode may only end

    c.absorb(torch.tensor([1]), torch.tensor([UNTHINK]))
    assert masked(c, [1]) == [{OPEN}]  # closing the thoughts opens the answer
    c.absorb(torch.tensor([1]), torch.tensor([OPEN]))
    assert masked(c, [1]) == [{3, 4}]  # SID from the root

    c.absorb(torch.tensor([1]), torch.tensor([4]))
    c.absorb(torch.tensor([1]), torch.tensor([5]))
    assert masked(c, [1]) == [{CLOSE}]  # reasoning at a leaf: close the answer first
    c.absorb(torch.tensor([1]), torch.tensor([CLOSE]))
    assert masked(c, [1]) == [{EOS}]


def test_budget_forcing_closes_the_thoughts_so_the_answer_fits_max_tokens():
    answer = TABLE.answer_length  # <think> </think> <answer> 2 SID tokens </answer> EOS
    assert answer == 7
    c = TrieConstraint(TABLE, V, max_slots=2, device="cpu")
    c.reset([0, 1], [RequestConstraint("reasoning", max_tokens=answer + 2), RequestConstraint("reasoning", max_tokens=answer)])
    for tokens in ([THINK, THINK], [2, UNTHINK]):
        c.absorb(torch.tensor([0, 1]), torch.tensor(tokens))
    # slot 1 had no budget for text at all: </think> right after <think>, then <answer>.
    assert masked(c, [0, 1]) == [TEXT, {OPEN}]
    c.absorb(torch.tensor([0]), torch.tensor([2]))  # the second and last free token
    assert masked(c, [0]) == [{UNTHINK}]
    for token, want in ((UNTHINK, {OPEN}), (OPEN, {3, 4}), (4, {5}), (5, {CLOSE}), (CLOSE, {EOS})):
        c.absorb(torch.tensor([0]), torch.tensor([token]))
        assert masked(c, [0]) == [want]
    with pytest.raises(ConstraintError, match="max_tokens >= 7"):
        c.reset([1], [RequestConstraint("reasoning", max_tokens=answer - 1)])


def test_prefix_starts_a_direct_request_inside_the_trie_and_moves_keep_state():
    c = TrieConstraint(TABLE, V, max_slots=3, device="cpu")
    c.reset([0, 1], [RequestConstraint("direct", (3,)), RequestConstraint("direct", (4,))])
    assert masked(c, [0, 1]) == [{5, 6}, {5}]
    c.move(torch.tensor([0, 1]), torch.tensor([1, 0]))  # swap
    assert masked(c, [0, 1]) == [{5}, {5, 6}]


def test_sid_tokens_out_of_the_trie_never_become_allowed_after_a_bad_token():
    c = TrieConstraint(TABLE, V, max_slots=1, device="cpu")
    c.reset([0], [RequestConstraint("direct")])
    c.absorb(torch.tensor([0]), torch.tensor([7]))  # cannot happen under the mask; must not reopen the trie
    assert masked(c, [0]) == [{EOS}]


def test_request_switches_are_validated():
    assert request_constraint(SamplingParams()) == RequestConstraint(None, max_tokens=16)
    assert request_constraint(SamplingParams(extra_args={EXTRA_ARGS_KEY: "direct", PREFIX_KEY: [3]}, max_tokens=4)) == \
        RequestConstraint("direct", (3,), 4)
    with pytest.raises(ConstraintError, match="expected one of"):
        request_constraint(SamplingParams(extra_args={EXTRA_ARGS_KEY: "sid"}))
    with pytest.raises(ConstraintError, match="needs"):
        request_constraint(SamplingParams(extra_args={EXTRA_ARGS_KEY: "reasoning", PREFIX_KEY: [3]}))
    no_tags = ConstraintTable(sids=[[3, 5]], eos_id=EOS)
    with pytest.raises(ConstraintError, match="reasoning mode needs"):
        TrieConstraint(no_tags, V, 1, "cpu").reset([0], [RequestConstraint("reasoning")])


def test_table_round_trips_through_json(tmp_path):
    path = TABLE.save(tmp_path / "c.json")
    assert ConstraintTable.load(path) == TABLE
    (tmp_path / "bad.json").write_text('{"sids": []}')
    with pytest.raises(ConstraintError, match="eos_id"):
        ConstraintTable.load(tmp_path / "bad.json")


def test_model_runner_v2_adapter_reads_committed_tokens_per_slot(tmp_path):
    """Drives the V2 adapter through the call sequence of Model Runner V2 (add_request,
    apply_staged_writes, apply with a LogitsContext), with the runner's per-slot buffers laid out
    as plain CPU tensors in `.gpu` (the real ones need CUDA)."""
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext

    slots, max_len = 4, 16
    buf = lambda t: SimpleNamespace(gpu=t)  # noqa: E731
    state = SimpleNamespace(device=torch.device("cpu"), max_num_reqs=slots, vocab_size=V,
                            all_token_ids=buf(torch.zeros(slots, max_len, dtype=torch.int32)),
                            prompt_len=buf(torch.zeros(slots, dtype=torch.int32)),
                            prefill_len=buf(torch.zeros(slots, dtype=torch.int32)),
                            total_len=buf(torch.zeros(slots, dtype=torch.int32)))
    config = SimpleNamespace(additional_config={"gream_constraint_path": str(TABLE.save(tmp_path / "c.json"))})
    proc = TrieLogitsProcessorV2(config, state)

    def admit(slot, prompt, mode):
        state.all_token_ids.gpu[slot, : len(prompt)] = torch.tensor(prompt)
        state.prompt_len.gpu[slot] = state.prefill_len.gpu[slot] = state.total_len.gpu[slot] = len(prompt)
        return proc.add_request(slot, SamplingParams(extra_args={EXTRA_ARGS_KEY: mode} if mode else None))

    def commit(slot, token):
        state.all_token_ids.gpu[slot, state.total_len.gpu[slot]] = token
        state.total_len.gpu[slot] += 1

    def step(active):
        idx = torch.tensor(active)
        ctx = LogitsContext(expanded_idx_mapping=idx, idx_mapping=idx, idx_mapping_np=np.array(active),
                            expanded_local_pos=torch.zeros(len(active), dtype=torch.long),
                            input_ids=torch.zeros(len(active), dtype=torch.long), pos=torch.zeros(len(active)),
                            seq_lens_upper_bound_np=np.zeros(len(active)))
        return [allowed(r) for r in proc.apply(torch.zeros(len(active), V), ctx)]

    assert admit(2, [10, 11], "direct") and not admit(0, [10], None)
    proc.apply_staged_writes()
    assert step([2, 0]) == [{3, 4}, set(range(V))]  # rows in any slot order
    commit(2, 4)
    commit(0, 7)
    assert step([0, 2]) == [set(range(V)), {5}]
    assert step([0, 2]) == [set(range(V)), {5}]  # a step with nothing new committed changes nothing
    commit(2, 5)
    assert step([2]) == [{EOS}]

    # A request resumed after preemption refills with its output so far; it is replayed at admission.
    admit(1, [10, 3], "direct")
    state.prompt_len.gpu[1] = 1
    proc.apply_staged_writes()
    assert step([1]) == [{5, 6}]


def test_one_pass_path_matches_the_general_mask_across_steps():
    c = TrieConstraint(TABLE, V, max_slots=3, device="cpu")
    c.reset([0, 1, 2], [RequestConstraint("direct"), RequestConstraint("direct", (3,)), RequestConstraint("direct", (4,))])
    slots = torch.tensor([0, 1, 2])
    for tokens in ([4, 6, 5], [5, EOS, EOS]):  # root / mid-SID / leaf rows, then leaves and closed rows
        logits = torch.randn(3, V)
        general, fast = c.mask_(logits.clone(), slots), c.mask_(logits.clone(), slots, all_sid=True)
        assert torch.equal(general, fast)
        c.absorb(slots, torch.tensor(tokens))


def test_text_steering_is_skipped_only_when_no_row_writes_text():
    # Direct rows beside unconstrained rows (mode None): no free or forced text anywhere.
    c = TrieConstraint(TABLE, V, max_slots=3, device="cpu")
    c.reset([0, 1, 2], [RequestConstraint("direct"), RequestConstraint(None), RequestConstraint("direct", (3,))])
    slots = torch.tensor([0, 1, 2])
    assert c.constrained_rows(slots) == (True, False, False)
    logits = torch.randn(3, V)
    assert torch.equal(c.mask_(logits.clone(), slots), c.mask_(logits.clone(), slots, True, False, False))
    # A reasoning row starts forced into <think>: its steering is needed and reported.
    c.reset([1], [RequestConstraint("reasoning", max_tokens=40)])
    assert c.constrained_rows(slots) == (True, False, True)
