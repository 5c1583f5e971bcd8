"""Scaffolded reasoning: the slot check and the assembled rationale against hand-written cases."""
from __future__ import annotations

import pytest

from indexing.sid import SidIndex
from sft.reasoning_data import check_reply
from sft.reasoning_scaffold import MAX_WORDS, check_slot, questions, rationale
from sft.tasks import ReasoningRecord

# Items as SIDs: 1 <a_0><b_0>, 2 <a_0><b_1>, 9 <a_1><b_1>.
INDEX = SidIndex({1: (0, 0), 2: (0, 1), 9: (1, 1)})
ITEMS = {1: {"title": "Swingline Heavy Duty Stapler, 60 Sheets, Black, Model 39005 Extra"},
         2: {"title": "Paper&nbsp;Clips"}, 9: {"title": "Gel Pen Refill"}}


@pytest.mark.parametrize("reply, text, reason", [
    ("The shopper likes sturdy office tools.", "The shopper likes sturdy office tools.", "kept"),
    # only the first non-empty line counts; whole sentences while they fit
    ("\n  They want pens. They like gel ink.\nUnrelated second line.", "They want pens. They like gel ink.", "kept"),
    # 5 + 9 words > 12: the second sentence is left out
    ("They want new pens. It is one of the best pens around here.", "They want new pens.", "kept"),
    ("Likes paper.", None, "short_slot"),  # 2 words < 4
    ("pen pen pen pen pen pen ink", None, "repetitive_slot"),  # 2 distinct of 7 words
    ("They liked <a_0><b_0> and <a_5><b_5> a lot.", None, "unknown_sid"),
    ("They liked <a_0><b_0> a lot.", "They liked <a_0><b_0> a lot.", "kept"),
])
def test_check_slot_by_hand(reply, text, reason):
    assert check_slot(reply, INDEX) == (text, reason)


def test_check_slot_cuts_a_long_reply_to_whole_sentences_within_the_limit():
    first = " ".join(f"w{i}" for i in range(MAX_WORDS - 2)) + "."
    second = " ".join(f"v{i}" for i in range(3)) + "."
    assert check_slot(f"{first} {second}", INDEX) == (first, "kept")  # one word over: the second is left out
    one_long = " ".join(f"u{i}" for i in range(50))
    text, reason = check_slot(one_long, INDEX)
    assert reason == "kept" and text.split() == one_long.split()[:MAX_WORDS]


def test_questions_name_the_context_and_the_target_with_short_titles():
    asked = questions([1, 2], 9, INDEX, ITEMS)
    assert len(asked) == 3 and len(set(asked)) == 3
    assert "<a_0><b_0> Swingline Heavy Duty Stapler, 60 Sheets, Black, Model\n<a_0><b_1> Paper Clips" in asked[0]
    assert "Next they bought: <a_1><b_1> Gel Pen Refill" in asked[0]
    assert asked[2].endswith("why does the next item suit this shopper?")


def test_rationale_has_five_stages_and_passes_the_free_format_check():
    text = rationale([1, 2], ["Likes sturdy tools.", "Wants to write.", "A refill fits a pen user."], INDEX, ITEMS)
    assert text.splitlines() == [
        "1. Behavioural evidence: <a_0><b_0> Swingline Heavy Duty; <a_0><b_1> Paper Clips",
        "2. Latent preferences: Likes sturdy tools.",
        "3. Intent: Wants to write.",
        "4. Recommendation: A refill fits a pen user.",
        "5. Denoised history: <a_0><b_0>, <a_0><b_1>",
    ]
    # What the student learns is a rationale the free format would also have kept.
    words = {1: frozenset({"swingline", "stapler"}), 2: frozenset({"paper", "clips"}), 9: frozenset({"gel", "pen"})}
    verdict = check_reply(text + "<answer><a_1><b_1></answer>", (2, 1), 9, INDEX, words)
    assert verdict.reason == "kept"
    assert ReasoningRecord((2, 1), 9, text).rationale == text
