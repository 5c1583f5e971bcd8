"""The Hugging Face baseline's prefix lookup in benchmarks/beam_eval.py (pure, no model)."""
import torch

from benchmarks.beam_eval import prefix_allowed_table, prefix_allowed_tokens_fn

EOS = 2
SIDS = [[5, 7, 9], [5, 8, 9], [6, 7, 10]]


def test_table_maps_every_prefix_to_its_next_tokens_and_complete_sids_to_eos():
    table = prefix_allowed_table(SIDS, EOS)
    assert table[()] == [5, 6]
    assert table[(5,)] == [7, 8]
    assert table[(6,)] == [7]
    assert table[(5, 7)] == [9] and table[(6, 7)] == [10]
    assert all(table[tuple(s)] == [EOS] for s in SIDS)
    assert len(table) == 1 + 2 + 3 + 3


def test_fn_looks_up_the_generated_part_of_a_left_padded_row():
    fn = prefix_allowed_tokens_fn(prefix_allowed_table(SIDS, EOS), prompt_len=4, eos_id=EOS)
    prompt = [0, 0, 11, 12]  # two pad tokens, then the prompt
    assert fn(0, torch.tensor(prompt)) == [5, 6]
    assert fn(3, torch.tensor(prompt + [5, 8])) == [9]
    assert fn(0, torch.tensor(prompt + [5, 8, 9])) == [EOS]
    assert fn(0, torch.tensor(prompt + [6, 8])) == [EOS]  # not a SID prefix: it may only end
