"""Scaffolded 5-stage reasoning for a teacher too small to write it whole (`sft.reasoning.format: scaffold`).

SmolLM2-135M, the offline default teacher, never writes the five stages and the answer tag when asked
for them in one reply (BENCHMARKS.md at 1878e6b, "Reasoning on Office"). It does answer one short question at a
time. So the data writes what it knows, the teacher what it does not:
1. Behavioural evidence: the pruned history (`prune_history`), as SIDs with short titles;
2-4. Latent preferences, intent, recommendation: one teacher sentence each, asked separately with the
     pruned history and the target in view;
5. Denoised history: the pruned history's SIDs.
Each teacher sentence is checked on its own (`check_slot`); an example is kept only if all three pass.
"""
from __future__ import annotations

import html
import re
from typing import Mapping, Sequence

from indexing.sid import SidIndex
from sft.tasks import title_of

QUESTIONS = (
    ("Latent preferences", "In one sentence, what does this shopper like?"),
    ("Intent", "In one sentence, what is this shopper looking for now?"),
    ("Recommendation", "In one sentence, why does the next item suit this shopper?"),
)
CONTEXT = "A shopper bought these items, oldest first:\n{context}\n\nNext they bought: {target}\n\n{question}"
# Words of a title: in a question, enough for the teacher to tell the item; in the rationale, few, as
# the whole thought must fit the student's thought budget (rl.max_think_tokens) to be learnt whole.
TITLE_WORDS, EVIDENCE_TITLE_WORDS = 8, 3
MIN_WORDS, MAX_WORDS = 4, 12  # of a teacher sentence
MIN_DISTINCT = 0.5  # distinct words / words below this is a loop, not a sentence

_SID_RUN = re.compile(r"(?:<[a-z]_\d+>)+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def _named(index: SidIndex, items: Mapping[int, dict], item: int, words: int = TITLE_WORDS) -> str:
    title = title_of(items, item)
    # Amazon titles carry HTML entities ("Perfection&nbsp;V500"): one opaque word, many student tokens.
    return f"{index.text(item)} {' '.join(html.unescape(title).split()[:words])}" if title else index.text(item)


def questions(context: Sequence[int], target: int, index: SidIndex, items: Mapping[int, dict]) -> list[str]:
    """The teacher's questions about one example, one per teacher-written stage."""
    lines = "\n".join(_named(index, items, i) for i in context)
    return [CONTEXT.format(context=lines, target=_named(index, items, target), question=q) for _, q in QUESTIONS]


def check_slot(reply: str, index: SidIndex) -> tuple[str | None, str]:
    """The reply's first line cut to whole sentences within MAX_WORDS (the first sentence's words when it
    alone is longer), or None and why: `short_slot` (under MIN_WORDS), `repetitive_slot`,
    `unknown_sid` (a SID no item has: the student would learn to invent items)."""
    line = next((ln.strip() for ln in reply.strip().splitlines() if ln.strip()), "")
    kept: list[str] = []
    for sentence in _SENTENCE_END.split(line):
        words = sentence.split()
        if kept and len(kept) + len(words) > MAX_WORDS:
            break
        kept.extend(words)
    kept = kept[:MAX_WORDS]
    if len(kept) < MIN_WORDS:
        return None, "short_slot"
    if len({w.lower() for w in kept}) / len(kept) < MIN_DISTINCT:
        return None, "repetitive_slot"
    text = " ".join(kept)
    if any(index.item_of(sid) is None for sid in _SID_RUN.findall(text)):
        return None, "unknown_sid"
    return text, "kept"


def rationale(context: Sequence[int], slots: Sequence[str], index: SidIndex, items: Mapping[int, dict]) -> str:
    evidence = "; ".join(_named(index, items, i, EVIDENCE_TITLE_WORDS) for i in context)
    stages = [f"1. Behavioural evidence: {evidence}"]
    stages += [f"{n}. {name}: {text}" for n, ((name, _), text) in enumerate(zip(QUESTIONS, slots), start=2)]
    stages.append(f"5. Denoised history: {', '.join(index.text(i) for i in context)}")
    return "\n".join(stages)
