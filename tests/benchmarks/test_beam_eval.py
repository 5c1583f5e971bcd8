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


def test_profile_counts_forward_calls_rows_and_wrapped_calls():
    from benchmarks.beam_profile import InProcessProfile, Tally, forward_tally, timed, vllm_lines

    model = torch.nn.Embedding(10, 4)
    with forward_tally(model) as forward:
        model(torch.zeros(3, 2, dtype=torch.long))
        model(input=torch.zeros(5, 1, dtype=torch.long))
    model(torch.zeros(7, 1, dtype=torch.long))  # after the block: not counted
    assert forward.calls == 2 and forward.rows == 3  # a keyword input that is not input_ids has no row count
    constraint = Tally()
    fn = timed(lambda x: x + 1, constraint)
    assert [fn(1), fn(2)] == [2, 3] and constraint.calls == 2 and constraint.seconds >= 0
    lines = InProcessProfile(2.0, Tally(1.5, 4, 40), Tally(0.1, 9)).lines("HF", 10)
    assert lines[0] == "HF: 2.00 s for 10 users; decoder forward 1.50 s (75%, 4 calls, 40 rows)"
    assert lines[-1] == "  search outside the model 0.40 s (20%)"
    vl = vllm_lines({"total": 1.0, "levels": [(10, 0.2), (30, 0.6)], "plain_seconds": 0.4}, 10)
    assert "40 engine requests (4.0 per user) in 2 generate calls" in vl[0]
    assert vl[1].startswith("  inside generate 0.80 s (80%), 20.00 ms per request")
    assert "10.00 ms each" in vl[2]
