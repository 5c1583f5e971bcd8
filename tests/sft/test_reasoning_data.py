"""Reasoning data: history pruning and reply filtering against hand-checked cases, and the whole
teacher loop of `gream teach` on real Office data against a real local HTTP server speaking the
OpenAI chat-completions JSON (cache, resume after a failure, report counts)."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from cluster.spec import JobSpec
from indexing.build import run as build_index
from indexing.dataset import Example
from indexing.rewrite import RewriteError
from indexing.sid import SidIndex
from sft import teach
from sft.reasoning_data import check_reply, prune_history, read_records, select_examples, title_words
from tests.chat_server import ChatServer

REPO = Path(__file__).resolve().parents[2]
OFFICE = REPO / "data/office"


def test_title_words_keep_content_words():
    assert title_words("Texas Instruments TI-83 Graphing Calculator, Black") == {
        "texas", "instruments", "graphing", "calculator"}
    assert title_words(None) == frozenset() and title_words("") == frozenset()


# Target 9 has SID (1, 2, 3) and title words {gel, pen, refill}. Relevance = (shared SID prefix,
# shared title words): item 1 (2, 1), item 5 (2, 0), item 2 (1, 0), item 6 (1, 0), item 3 (0, 2),
# item 4 (0, 0) is unrelated. Item 2 appears twice and counts at its latest position (6).
CODES = {1: (1, 2, 0), 2: (1, 0, 0), 3: (0, 2, 3), 4: (5, 5, 5), 5: (1, 2, 7), 6: (1, 0, 1), 9: (1, 2, 3)}
WORDS = {1: frozenset({"pen"}), 3: frozenset({"gel", "pen"}), 4: frozenset({"paper"}), 9: frozenset({"gel", "pen", "refill"})}
HISTORY = (2, 1, 4, 3, 6, 5, 2)


def test_prune_history_ranks_by_sid_prefix_then_title_words_and_keeps_order():
    # top 3: item 1 (pos 1), item 5 (pos 5), item 2 (pos 6; ties with item 6 at pos 4, more recent wins)
    assert prune_history(HISTORY, 9, CODES, WORDS, max_keep=3) == (1, 5, 2)
    assert prune_history(HISTORY, 9, CODES, WORDS, max_keep=4) == (1, 6, 5, 2)
    # every related item, in history order, the repeat once and the unrelated item 4 never
    assert prune_history(HISTORY, 9, CODES, WORDS, max_keep=10) == (1, 3, 6, 5, 2)
    assert prune_history(HISTORY, 9, CODES, WORDS, max_keep=1) == (1,)


def test_prune_history_keeps_the_latest_item_when_nothing_is_related():
    assert prune_history((3, 4), 9, {3: (0,), 4: (0,), 9: (1,)}, {}) == (4,)
    assert prune_history((4, 7), 9, CODES, WORDS) == (7,)  # item 7 has neither SID nor title
    with pytest.raises(ValueError, match="non-empty history"):
        prune_history((), 9, CODES, WORDS)


# Items as SIDs: 1 <a_0><b_0>, 2 <a_0><b_1>, 3 <a_1><b_0>, target 9 <a_1><b_1>.
TINY = SidIndex({1: (0, 0), 2: (0, 1), 3: (1, 0), 9: (1, 1)})
TINY_WORDS = {1: frozenset({"stapler", "heavy", "duty"}), 2: frozenset({"paper", "clips"}),
              3: frozenset({"gel", "pen", "fine"}), 9: frozenset({"gel", "pen", "refill"})}
ANSWER = "<answer><a_1><b_1></answer>"


@pytest.mark.parametrize("reply, reason, rationale", [
    ("1. Bought <a_0><b_0>, a stapler.\n  2. Organised.  \n" + ANSWER, "kept", "1. Bought <a_0><b_0>, a stapler.\n2. Organised."),
    ("<think>Cites <a_0><b_1>.</think>" + ANSWER, "kept", "Cites <a_0><b_1>."),
    ("Writes with a fine pen.<answer> <a_1> <b_1> </answer>", "kept", "Writes with a fine pen."),  # item 3's 'fine'
    ("Stapler, heavy use.\n" + ANSWER, "kept", "Stapler, heavy use."),  # item 1: two of its words
    ("Likes gel pens; a pen refill fits.\n" + ANSWER, "no_citation", None),  # only the target's own words
    ("Buys paper in bulk.\n" + ANSWER, "no_citation", None),  # one of item 2's two words is not enough
    ("Bought <a_0><b_0>.\n<answer><a_0><b_1></answer>", "wrong_answer", None),
    ("Bought <a_0><b_0>.\n<answer><a_1></answer>", "wrong_answer", None),
    ("Bought <a_0><b_0>, so <a_1><b_1>.", "no_answer", None),
    ("<think> </think>" + ANSWER, "empty_rationale", None),
    ("Bought <a_0><b_0> and <a_7><b_7>.\n" + ANSWER, "unknown_sid", None),
])
def test_check_reply(reply, reason, rationale):
    verdict = check_reply(reply, (1, 2, 3), 9, TINY, TINY_WORDS)
    assert (verdict.reason, verdict.text) == (reason, rationale)


def test_check_reply_cites_only_the_given_history():
    verdict = check_reply("Bought <a_0><b_0>.\n" + ANSWER, (2, 3), 9, TINY, TINY_WORDS)
    assert verdict.reason == "no_citation"


def test_select_examples_is_a_seeded_capped_sample_in_split_order():
    train = [Example(u, (u,), u + 1) for u in range(50)]
    picked = select_examples(train, 10, seed=3)
    assert len(picked) == 10 and picked == sorted(picked, key=lambda e: e.user)
    assert picked == select_examples(train, 10, seed=3) and picked != select_examples(train, 10, seed=4)
    assert select_examples(train[:5], 10, seed=3) == train[:5]


class Teacher:
    """Replies for the local chat server. Reads the target SID and the first history line from
    the prompt and answers in one of three ways chosen by a hash of the target: a good rationale
    citing that history item by SID, one that answers a wrong SID, or one citing nothing."""

    MODES = ("good", "wrong_answer", "no_citation")

    @staticmethod
    def parts(prompt: str) -> tuple[str, str]:
        target = re.findall(r"<answer>(.*?)</answer>", prompt)[-1]
        first_history_sid = re.match(r"(?:<[a-z]_\d+>)+", prompt.splitlines()[1]).group(0)
        return target, first_history_sid

    @classmethod
    def mode(cls, prompt: str) -> str:
        target, _ = cls.parts(prompt)
        return cls.MODES[int(hashlib.sha256(target.encode()).hexdigest(), 16) % 3]

    @classmethod
    def reply(cls, prompt: str) -> str:
        target, cited = cls.parts(prompt)
        mode = cls.mode(prompt)
        if mode == "good":
            return f"1. Evidence: the shopper bought {cited}.\n2-5. More of the same.\n<answer>{target}</answer>"
        if mode == "wrong_answer":
            return f"1. Evidence: {cited}.\n<answer>{cited}</answer>"
        return f"1. The shopper needs something new.\n<answer>{target}</answer>"


@pytest.fixture
def server():
    """Answers with `Teacher.reply`; can fail (HTTP 500) from the n-th request on."""
    with ChatServer(Teacher.reply) as s:
        yield s


def make_spec(run_dir: Path, **reasoning) -> JobSpec:
    return JobSpec(name="reasoning", run_dir=str(run_dir), data={"path": str(OFFICE)},
                   index={"import_file": str(OFFICE / "Office.unitok5.index.json")},
                   sft={"reasoning": reasoning}, cluster={"device": "cpu"}, logging={"tensorboard": False})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reasoning")
    build_index(make_spec(root))
    return root


def test_teacher_loop_caches_resumes_filters_and_reports(server, run_dir):
    spec = make_spec(run_dir, enabled=True, endpoint=server.url, teacher="teacher-x", max_examples=12)
    server.fail_from = 9  # batches of 4: the first two complete, the third fails
    with pytest.raises(RewriteError, match="HTTP 500: teacher overloaded"):
        teach.run(spec, batch_size=4)
    out = spec.layout.reasoning
    assert len((out / "teacher_cache.jsonl").read_text().splitlines()) == 8
    answered = server.prompts[:8]

    server.fail_from = None
    sent = len(server.prompts)
    teach.run(spec, batch_size=4)
    records = read_records(spec)
    resent = server.prompts[sent:]
    assert len(resent) == 4 and not set(resent) & set(answered)  # nothing answered is asked again
    asked = answered + resent
    assert len(set(asked)) == 12

    expected = {m: sum(Teacher.mode(p) == m for p in asked) for m in Teacher.MODES}
    assert all(expected.values()), expected  # the fixed data exercises every mode
    report = json.loads((out / "report.json").read_text())
    assert report["examples"] == 12 and (report["asked"], report["from_cache"]) == (4, 8)
    assert report["kept"] == len(records) == expected["good"]
    assert report["dropped_by_reason"] == {"no_citation": expected["no_citation"],
                                           "wrong_answer": expected["wrong_answer"]}
    assert report["dropped"] == 12 - expected["good"]
    assert 1 <= report["mean_context"] <= 5 and report["mean_history"] >= report["mean_context"]

    index = SidIndex.load(run_dir / "index/Office.index.json")
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [(tuple(r["history"]), r["target"], r["rationale"]) for r in rows] == [
        (r.history, r.target, r.rationale) for r in records]
    for rec, row in zip(records, rows):
        assert set(row["context"]) <= set(rec.history)
        assert index.text(row["context"][0]) in rec.rationale and "<answer>" not in rec.rationale

    # A re-run is served from the cache: nothing is sent, the same records come back.
    sent = len(server.prompts)
    teach.run(spec, batch_size=4)
    assert read_records(spec) == records and len(server.prompts) == sent
    assert json.loads((out / "report.json").read_text())["from_cache"] == 12


def test_disabled_is_a_no_op(tmp_path):
    spec = make_spec(tmp_path, enabled=False, endpoint="http://127.0.0.1:9/v1", teacher="x")
    assert teach.run(spec) == {} and not spec.layout.reasoning.exists()
    assert teach.read_for_sft(spec) == ([], None)


def test_endpoint_without_a_model_name_is_a_clear_error(run_dir):
    with pytest.raises(ValidationError, match="sft.reasoning.teacher must name the model sft.reasoning.endpoint serves"):
        make_spec(run_dir, enabled=True, endpoint="http://127.0.0.1:9/v1")


def scaffold_reply(prompt: str) -> str:
    """One sentence per question; the intent question gets a loop, which the slot check drops."""
    if "looking for now" in prompt and int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 2:
        return "pens pens pens pens pens pens"
    return "The shopper keeps a tidy desk. They buy office basics in large packs."


def test_scaffold_asks_three_questions_per_example_and_keeps_whole_examples(run_dir):
    with ChatServer(scaffold_reply) as s:
        spec = make_spec(run_dir, enabled=True, endpoint=s.url, teacher="teacher-y", max_examples=10, format="scaffold")
        teach.run(spec, batch_size=8)
        assert len(s.prompts) == 30  # three questions for each of the 10 examples
        loops = sum("looking for now" in p and scaffold_reply(p).startswith("pens") for p in s.prompts)
    report = json.loads((spec.layout.reasoning / "report.json").read_text())
    assert (report["format"], report["examples"], report["asked"], report["from_cache"]) == ("scaffold", 10, 30, 0)
    assert 1 <= loops < 10 and report["dropped_by_reason"] == {"repetitive_slot": loops}
    records = read_records(spec)
    assert report["kept"] == len(records) == 10 - loops >= 1
    for rec in records:
        lines = rec.rationale.splitlines()
        assert [ln.split(":")[0] for ln in lines] == ["1. Behavioural evidence", "2. Latent preferences", "3. Intent",
                                                     "4. Recommendation", "5. Denoised history"]
        assert lines[1] == "2. Latent preferences: The shopper keeps a tidy desk."  # 6 + 7 words > 12
