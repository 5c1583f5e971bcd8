"""Teacher-written preference summaries for the `preference` task (DESIGN.md section 3: history ->
user preference summary written by a teacher LLM).

For each selected training user the teacher sees the latest `sft.preference.history_items` items of
the history the task trains on (the user's longest training history, sft.tasks.longest_history), as
`SID - title` lines, and writes a short summary of the shopper's preferences. `gream teach`
(sft/teach.py) runs it, through the same cache and report as the reasoning records; SFT reads the
kept summaries from `<run_dir>/teach/preference/summaries.jsonl`.
"""
from __future__ import annotations

import random
import re
from typing import Mapping, Sequence

from cluster.spec import JobSpec
from indexing.dataset import Example
from indexing.rewrite import Teacher
from indexing.sid import SidIndex
from sft import teacher_data
from sft.reasoning_data import SID_RUN, history_line
from sft.tasks import longest_history
from sft.teacher_data import KEPT, Verdict, judged

KIND = "preference"
SUMMARIES_FILE = "summaries.jsonl"
# Bounds of a usable summary, in words: below, it says nothing a title would not; above, it is a
# listing or a ramble (a reply cut off at max_tokens lands here too).
MIN_WORDS = 8
MAX_WORDS = 120
# A reply whose word trigrams are mostly the prompt's is a copy of the history or of the instructions.
COPY_SHARE = 0.6

PROMPT = """A shopper bought these items, oldest first (semantic ID - title):
{history}

In two to four sentences, describe this shopper's preferences: the kinds of products they buy, the
qualities or brands they seem to value, and what they are likely to look for next. Write about the
shopper in your own words; do not list the items. Reply with the summary only."""

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S)
_TAG = re.compile(r"</?(?:think|answer)>")
_WORD = re.compile(r"[a-z0-9]+")


def select_users(train: Sequence[Example], max_users: int, seed: int) -> list[Example]:
    """A seeded sample of at most `max_users` training users, each with the longest training history
    (the example the preference task renders), in user order."""
    longest = longest_history(train)
    users = sorted(longest)
    if len(users) > max_users:
        users = sorted(random.Random(f"preference:{seed}").sample(users, max_users))
    return [longest[u] for u in users]


def preference_prompt(history: Sequence[int], index: SidIndex, items: Mapping[int, dict]) -> str:
    return PROMPT.format(history="\n".join(history_line(index, items, i) for i in history))


def _trigrams(text: str) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i:i + 3]) for i in range(len(words) - 2)}


def check_summary(reply: str, prompt: str, index: SidIndex) -> Verdict:
    """Keep a summary only if it is usable as a training target. A reasoning model's `<think>` block
    is not part of it. Dropped, in this order: nothing left (`empty`); fewer than MIN_WORDS words
    (`too_short`) or more than MAX_WORDS (`too_long`); a SID, or a run of SID tokens, that no item
    has (`unknown_sid`: the student would learn to invent items); at least COPY_SHARE of its word
    trigrams taken from the prompt (`copies_prompt`: the history or the instructions repeated)."""
    text = " ".join(_TAG.sub(" ", _THINK_BLOCK.sub(" ", reply)).split())
    if not text:
        return Verdict(None, "empty")
    words = len(text.split())
    if words < MIN_WORDS:
        return Verdict(None, "too_short")
    if words > MAX_WORDS:
        return Verdict(None, "too_long")
    if any(index.item_of(sid) is None for sid in SID_RUN.findall(text)):
        return Verdict(None, "unknown_sid")
    grams = _trigrams(text)
    if grams and len(grams & _trigrams(prompt)) >= COPY_SHARE * len(grams):
        return Verdict(None, "copies_prompt")
    return Verdict(text, KEPT)


def generate_preferences(spec: JobSpec, users: Sequence[Example], index: SidIndex, items: Mapping[int, dict],
                         teacher: Teacher, batch_size: int = 32) -> dict:
    """Ask the teacher for every user's summary (cached replies are not asked again), filter them and
    write the kept ones and `report.json` to `spec.layout.preference`; returns the report."""
    shown = [ex.history[-spec.sft.preference.history_items:] for ex in users]
    prompts = [preference_prompt(h, index, items) for h in shown]
    replies, asked = teacher_data.ask(KIND, prompts, teacher, spec.layout.preference, batch_size)
    verdicts = [judged([r], teacher.max_tokens, lambda reply: check_summary(reply, p, index))
                for r, p in zip(replies, prompts)]
    rows = [{"user": ex.user, "history": list(h), "summary": v.text}
            for ex, h, v in zip(users, shown, verdicts) if v.text is not None]
    return teacher_data.write(spec, KIND, teacher, spec.layout.preference, SUMMARIES_FILE, rows, verdicts, asked,
                              mean_history=round(sum(map(len, shown)) / max(1, len(shown)), 2))


def read_summaries(spec: JobSpec) -> dict[int, str]:
    """user -> summary, as `gream teach` kept them, for SFT (MissingArtefact, exit 2, when absent or stale)."""
    return {r["user"]: r["summary"] for r in teacher_data.read(spec, KIND, spec.layout.preference, SUMMARIES_FILE)}
