"""SFT task rendering and tokenisation on the real Office data with the bundled index."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from indexing.dataset import leave_one_out, load_dataset, make_split
from sft.batches import collate
from sft.hf_folder import load_backbone
from sft.prompts import TEMPLATES, render_seqrec_prompt
from sft.tasks import (
    IGNORE_INDEX,
    AlignmentBuilder,
    ReasoningRecord,
    TaskError,
    answer_prefixes,
    build_alignment,
    covering_windows,
    title_of,
    tokenize,
)

REPO = Path(__file__).resolve().parents[2]
OFFICE = REPO / "data/office"


@pytest.fixture(scope="module")
def setup(tiny_policy):
    # The session's tiny Qwen3 with the bundled Office SIDs added (tests/conftest.py).
    _, tok = load_backbone(tiny_policy.model_dir)
    ds = load_dataset(OFFICE, "Office")
    return tok, tiny_policy.index, ds, leave_one_out(ds)


def test_seqrec_prompt_is_the_canonical_one_and_answer_is_the_sid(setup):
    tok, index, ds, split = setup
    builder = AlignmentBuilder(tok, index, ds.items, seed=0)
    examples = builder.seqrec(split.train[:200])
    canonical = 0
    for ex, src in zip(examples, split.train[:200]):
        assert ex.completion == index.text(src.target) + "<|im_end|>"
        history = [index.text(i) for i in src.history]
        assert "".join(history) in ex.prompt and ex.prompt.endswith("<|im_start|>assistant\n")
        canonical += ex.prompt == render_seqrec_prompt(tok, history)
    assert 0 < canonical < 200  # several templates are drawn, the RL/eval one among them


def test_bare_prompts_write_the_history_alone_and_the_saved_tokenizer_says_so(setup, tmp_path):
    from transformers import AutoTokenizer

    from sft.prompts import build_prompts, use_bare_prompts, uses_bare_prompts

    tok, index, ds, split = setup
    bare = copy.deepcopy(tok)
    use_bare_prompts(bare)
    bare.save_pretrained(tmp_path)
    reread = AutoTokenizer.from_pretrained(tmp_path)
    assert uses_bare_prompts(reread) and not uses_bare_prompts(tok)
    rows = split.train[:50]
    examples = AlignmentBuilder(reread, index, ds.items, seed=0).seqrec(rows)
    sid_ids = frozenset(tok.convert_tokens_to_ids(t) for t in index.vocab())
    for ex, src, toks in zip(examples, rows, tokenize(reread, examples, 256, sid_ids)):
        history = [index.text(i) for i in src.history]
        # One end-of-turn token, then the history: every example is written as evaluation writes it.
        assert ex.prompt == "<|im_end|>" + "".join(history) == render_seqrec_prompt(reread, history)
        assert ex.completion == index.text(src.target) + "<|im_end|>"
        assert len(toks.input_ids) == 1 + sum(len(index.tokens(i)) for i in (*src.history, src.target)) + 1
        # Every SID token is a target, the first history item's included; the answer's end is not.
        assert toks.labels == [IGNORE_INDEX, *toks.input_ids[1:-1], IGNORE_INDEX]
    prompts = build_prompts(reread, index, rows[:3], reasoning=False)
    answer = len(index.tokens(rows[0].target)) + 1
    assert prompts.prompt_ids[0] == tokenize(reread, examples[:1], 256)[0].input_ids[:-answer]
    with pytest.raises(ValueError, match="sft.prompt: bare"):
        render_seqrec_prompt(reread, history, reasoning=True)


def test_item_and_fusion_tasks(setup):
    tok, index, ds, split = setup
    builder = AlignmentBuilder(tok, index, ds.items, seed=0)
    rendered = build_alignment(builder, ["item2index", "index2item", "fusion_title", "fusion_sid"], split.train)
    by_task = {}
    for ex in rendered:
        by_task.setdefault(ex.task, []).append(ex)
    titled = [i for i in index.items() if title_of(ds.items, i)]
    assert len(by_task["item2index"]) == len(by_task["index2item"]) == len(titled)
    assert 0 < len(by_task["fusion_title"]) <= index.num_items and 0 < len(by_task["fusion_sid"]) <= index.num_items
    first = titled[0]
    ex = next(e for e in by_task["index2item"] if index.text(first) in e.prompt)
    assert ex.completion == title_of(ds.items, first) + "<|im_end|>"
    for ex in by_task["fusion_sid"][:50]:
        assert index.item_of(ex.completion.removesuffix("<|im_end|>")) is not None
        assert "<a_" not in ex.prompt  # the history is written as titles


def test_reasoning_examples_use_the_reasoning_prompt(setup):
    tok, index, ds, split = setup
    builder = AlignmentBuilder(tok, index, ds.items)
    ex = split.train[5]
    [r] = builder.reasoning([ReasoningRecord(ex.history, ex.target, "The user buys paper.")])
    assert r.prompt == render_seqrec_prompt(tok, [index.text(i) for i in ex.history], reasoning=True)
    assert r.completion == f"<think>The user buys paper.</think><answer>{index.text(ex.target)}</answer><|im_end|>"


def test_tokenize_masks_the_prompt_and_collate_aligns_labels(setup):
    tok, index, ds, split = setup
    builder = AlignmentBuilder(tok, index, ds.items)
    rendered = builder.seqrec(split.train[:2]) + builder.index2item()[:1]
    toks = tokenize(tok, rendered, max_len=256)
    for ex, t in zip(rendered, toks):
        n_prompt = len(tok(ex.prompt, add_special_tokens=False)["input_ids"])
        assert t.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert t.labels[n_prompt:] == t.input_ids[n_prompt:] == tok(ex.completion, add_special_tokens=False)["input_ids"]
        assert t.input_ids[-1] == tok.eos_token_id
    batch = collate(toks, tok.pad_token_id)
    width = batch.input_ids.shape[1]
    for row, t in enumerate(toks):
        n = len(t.input_ids)
        assert batch.attention_mask[row].tolist() == [0] * (width - n) + [1] * n
        assert batch.position_ids[row, width - n:].tolist() == list(range(n))
        # targets[p] is the token at p + 1 where that token is supervised.
        for p in range(width - 1):
            j = p + 1 - (width - n)  # index of the next token within the example
            want = t.labels[j] if 0 < j < n else IGNORE_INDEX
            assert batch.targets[row, p] == want
        assert batch.targets[row, -1] == IGNORE_INDEX and batch.targets[row, -2] == tok.eos_token_id
    assert batch.supervised_tokens == sum(sum(x != IGNORE_INDEX for x in t.labels) for t in toks)
    assert len(tokenize(tok, rendered, max_len=10)) == 0  # too long: dropped, not cut


def test_history_loss_supervises_every_history_sid_of_seqrec_only(setup):
    tok, index, ds, split = setup
    builder = AlignmentBuilder(tok, index, ds.items)
    ex = max(split.train[:50], key=lambda e: len(e.history))
    rendered = builder.seqrec([ex]) + builder.fusion_title([ex], 1)
    sid_ids = frozenset(tok.convert_tokens_to_ids(index.vocab()))
    seq, fusion = tokenize(tok, rendered, max_len=512, history_tokens=sid_ids)
    n_prompt = len(tok(rendered[0].prompt, add_special_tokens=False)["input_ids"])
    supervised = [t for t in seq.labels[:n_prompt] if t != IGNORE_INDEX]
    history = [t for i in ex.history for t in tok.convert_tokens_to_ids(index.tokens(i))]
    assert supervised == history and len(history) == index.depth * len(ex.history)
    n_fusion = len(tok(rendered[1].prompt, add_special_tokens=False)["input_ids"])
    assert set(fusion.labels[:n_fusion]) == {IGNORE_INDEX}


@pytest.mark.parametrize("split_kind", ["loo", "temporal"])
def test_covering_windows_hold_every_training_target_once(setup, split_kind):
    tok, index, ds, _ = setup
    split = make_split(ds, split_kind, max_history=5)
    windows = covering_windows(split.train)
    assert len(windows) < len(split.train)
    by_user: dict[int, list] = {}
    for w in windows:
        by_user.setdefault(w.user, []).append(w)
    targets: dict[int, list[int]] = {}
    for ex in split.train:
        targets.setdefault(ex.user, []).append(ex.target)
    assert by_user.keys() == targets.keys()
    for user, rows in by_user.items():
        # Windows, oldest first, concatenate to the user's training targets, preceded by the
        # sequence's first item when the oldest window starts there.
        covered = [i for w in reversed(rows) for i in (*w.history, w.target)]
        first = next(ex for ex in split.train if ex.user == user).history
        assert covered in (targets[user], list(first) + targets[user])


def test_answer_prefixes_add_seeded_per_user_examples_to_the_windows(setup):
    tok, index, ds, split = setup
    train = split.train[:300]
    per_user: dict[int, set] = {}
    for ex in train:
        per_user.setdefault(ex.user, set()).add(ex)
    extra = answer_prefixes(train, 2, seed=0)
    assert len(extra) == sum(min(2, len(v)) for v in per_user.values())
    drawn: dict[int, list] = {}
    for ex in extra:
        drawn.setdefault(ex.user, []).append(ex)
    assert all(len(set(rows)) == len(rows) and set(rows) <= per_user[u] for u, rows in drawn.items())
    assert extra == answer_prefixes(train, 2, seed=0) and extra != answer_prefixes(train, 2, seed=1)
    builder = AlignmentBuilder(tok, index, ds.items)
    rows = build_alignment(builder, ["seqrec"], train, history_loss=True, extra_answers=2)
    assert len(rows) == len(covering_windows(train)) + len(extra)
    with pytest.raises(TaskError, match="answer_prefixes"):
        build_alignment(builder, ["seqrec"], train, history_loss=False, extra_answers=1)


def test_bad_task_requests(setup):
    tok, index, ds, split = setup
    builder = AlignmentBuilder(tok, index, ds.items)
    with pytest.raises(TaskError, match="'preference'"):
        build_alignment(builder, ["preference"], split.train)
    with pytest.raises(TaskError, match="needs item titles"):
        build_alignment(AlignmentBuilder(tok, index, {}), ["index2item"], split.train)
    assert TEMPLATES["seqrec"][0].startswith("Purchase history")


def test_retrieved_items_reach_sft_rl_and_eval_prompts_alike(setup):
    """sft.retrieved_items: the SFT next-item prompt, the RL prompt and the evaluation prompt of one
    example carry the same similar-items line (here the items most alike by co-occurrence)."""
    import numpy as np

    from indexing.collaborative import collaborative_vectors
    from indexing.neighbours import similar_items
    from rl_system.prompt_source import PromptSource
    from sft.prompts import HistoryWriter, build_prompts, related_sids, seqrec_instruction

    tok, index, ds, split = setup
    related = similar_items(collaborative_vectors(split.train, ds.num_items, 32, 3), 3)
    assert related.shape == (ds.num_items, 3) and not (related == np.arange(ds.num_items)[:, None]).any()
    examples = split.train[:100]
    sft = AlignmentBuilder(tok, index, ds.items, seed=0, related=related).seqrec(examples)
    rl = PromptSource(examples, index, tok, seed=0, related=related)
    evaluated = build_prompts(tok, index, examples, False, related)
    canonical = 0
    for i, (ex, rendered) in enumerate(zip(examples, sft)):
        history = [index.text(h) for h in ex.history]
        similar = related_sids(HistoryWriter(index), related, ex.history)
        assert similar == [index.text(int(j)) for j in related[ex.history[-1]]]
        assert f"\nSimilar to the last: {''.join(similar)}" in rendered.prompt
        prompt = render_seqrec_prompt(tok, history, False, similar)
        assert rl.render(i, ex).text == prompt
        assert evaluated.prompt_ids[i] == tok(prompt, add_special_tokens=False)["input_ids"]
        canonical += rendered.prompt == prompt
    assert canonical > 0
    assert seqrec_instruction(["<a_1><b_2>"], 0, False, ["<a_3><b_4>", "<a_5><b_6>"]) == (
        "Purchase history: <a_1><b_2>\nNext item?\nSimilar to the last: <a_3><b_4><a_5><b_6>")
    assert render_seqrec_prompt(tok, history) != prompt  # without the table, no line


@pytest.mark.parametrize("sets", [["sft.retrieved_items=3"], ["rl.mode=reasoning"], ["eval.modes=[direct,reasoning]"]])
def test_bare_prompts_refuse_what_they_cannot_write(sets, capsys):
    from gream.cli import main

    argv = ["config", "show", "configs/demo.yaml", "--set", "sft.prompt=bare"]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 2
    err = capsys.readouterr().err
    assert "bare" in err and sets[0].split("=")[0] in err
    assert main(argv) == 0
