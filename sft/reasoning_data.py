"""Teacher-written reasoning data for the SFT curriculum (DESIGN.md section 3).

For each selected training example the teacher sees the target and a history pruned to the items
related to it (OneRec-Think's bootstrapping with pruned contexts), and writes the 5-stage chain of
thought: behavioural evidence, latent preferences, intent, recommendation, denoised history. The
student later learns to produce that rationale from the full, noisy history.

`gream teach` (sft/teach.py) runs it. Replies go through the teacher client and append-only cache
of `indexing.rewrite`, so an interrupted run resumes and a re-run asks nothing. A reply is kept only
if its answer is the target SID, every SID it writes is a real one, and it cites at least one history
item; the counts kept and dropped (per reason) go to `<run_dir>/teach/reasoning/report.json` beside
the kept records (`records.jsonl`), which SFT reads.
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
from sft.reasoning_scaffold import check_slot
from sft.reasoning_scaffold import questions as scaffold_questions
from sft.reasoning_scaffold import rationale as scaffold_rationale
from sft.tasks import ReasoningRecord, title_of
from sft.teacher_data import KEPT, Verdict, judged

KIND = "reasoning"
MAX_CONTEXT = 5  # items the teacher sees: enough for a pattern, few enough that none is noise
RECORDS_FILE = "records.jsonl"

PROMPT = """A shopper bought these items, oldest first (semantic ID - title):
{context}

The item they bought next is:
{target}

Write the reasoning that leads from these purchases to that next item, in five short numbered stages:
1. Behavioural evidence: the purchases above that point towards the next item, cited by title or ID.
2. Latent preferences: what those purchases reveal about the shopper's tastes and needs.
3. Intent: what the shopper is looking for now.
4. Recommendation: the kind of item that meets this intent, and why.
5. Denoised history: the purchases that support the recommendation, leaving out unrelated ones.
Reason forward from the purchases, never saying you were told the next item. Stay under 150 words.
End with <answer>{sid}</answer> and nothing after it."""

_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(
    "and the for with from into this that pack set black white blue red new size inch inches count".split())
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
_THINK_TAG = re.compile(r"</?think>")
SID_RUN = re.compile(r"(?:<[a-z]_\d+>)+")  # consecutive level tokens: one written SID


def title_words(title: str | None) -> frozenset[str]:
    """Content words of a title, lower-cased; short and generic words carry no item identity."""
    if not title:
        return frozenset()
    return frozenset(w for w in _WORD.findall(title.lower()) if len(w) >= 3 and w not in _STOPWORDS)


def shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prune_history(history: Sequence[int], target: int, codes: Mapping[int, Sequence[int]],
                  words: Mapping[int, frozenset[str]], max_keep: int = MAX_CONTEXT) -> tuple[int, ...]:
    """The history items most related to the target, in their original order.

    An item's relevance is (length of the SID prefix it shares with the target, number of title
    words it shares with the target), compared in that order: the SID prefix is the index's
    semantic cluster, the title words separate items within it. Items with neither are dropped; the
    `max_keep` most relevant stay, ties going to the more recent. A repeated item counts once, at
    its latest position. With no related item at all the most recent one is kept, so the teacher
    always has evidence to cite.
    """
    if not history:
        raise ValueError("prune_history needs a non-empty history")
    if max_keep < 1:
        raise ValueError(f"max_keep must be at least 1, got {max_keep}")
    target_codes, target_words = codes.get(target, ()), words.get(target, frozenset())
    scored, seen = [], set()
    for pos in range(len(history) - 1, -1, -1):
        item = history[pos]
        if item in seen:
            continue
        seen.add(item)
        score = (shared_prefix(codes.get(item, ()), target_codes), len(words.get(item, frozenset()) & target_words))
        if score > (0, 0):
            scored.append((score, pos))
    if not scored:
        return (history[-1],)
    best = sorted(scored, reverse=True)[:max_keep]
    return tuple(history[pos] for pos in sorted(pos for _, pos in best))


def _clean_rationale(text: str) -> str:
    text = _THINK_TAG.sub("", text)
    return "\n".join(line.strip() for line in text.strip().splitlines() if line.strip())


def check_reply(reply: str, history: Sequence[int], target: int, index: SidIndex,
                words: Mapping[int, frozenset[str]]) -> Verdict:
    """Keep a teacher reply only if it is usable as a training target.

    Dropped, in this order: no `<answer>` tag (`no_answer`); the answer is not the target's SID
    (`wrong_answer`); nothing before the answer (`empty_rationale`); the rationale writes a SID, or a run
    of SID tokens, that no item has (`unknown_sid`: the student would learn to invent items); the rationale cites no
    item of `history`, neither by SID nor by title (`no_citation`). A title counts as cited when
    the rationale uses at least two (or all, if fewer) of its words that the target's title lacks,
    so describing the target alone is not mistaken for citing the history.
    """
    match = _ANSWER.search(reply)
    if match is None:
        return Verdict(None, "no_answer")
    if "".join(match.group(1).split()) != index.text(target):
        return Verdict(None, "wrong_answer")
    rationale = _clean_rationale(reply[: match.start()])
    if not rationale:
        return Verdict(None, "empty_rationale")
    if any(index.item_of(sid) is None for sid in SID_RUN.findall(rationale)):
        return Verdict(None, "unknown_sid")
    said = set(_WORD.findall(rationale.lower()))
    target_words = words.get(target, frozenset())
    for item in history:
        if index.text(item) in rationale:
            return Verdict(rationale, KEPT)
        distinct = words.get(item, frozenset()) - target_words
        if distinct and len(distinct & said) >= min(2, len(distinct)):
            return Verdict(rationale, KEPT)
    return Verdict(None, "no_citation")


def select_examples(train: Sequence[Example], max_examples: int, seed: int) -> list[Example]:
    """A seeded sample of at most `max_examples`, in split order."""
    if len(train) <= max_examples:
        return list(train)
    picked = random.Random(f"reasoning:{seed}").sample(range(len(train)), max_examples)
    return [train[i] for i in sorted(picked)]


def history_line(index: SidIndex, items: Mapping[int, dict], item: int) -> str:
    """How the teacher sees an item: `SID - title`, or the bare SID where the item has no title."""
    title = title_of(items, item)
    return f"{index.text(item)} - {title}" if title else index.text(item)


def teacher_prompt(context: Sequence[int], target: int, index: SidIndex, items: Mapping[int, dict]) -> str:
    return PROMPT.format(context="\n".join(history_line(index, items, i) for i in context),
                         target=history_line(index, items, target), sid=index.text(target))


def _scaffold_verdict(replies: Sequence[str], context: Sequence[int], index: SidIndex,
                      items: Mapping[int, dict]) -> Verdict:
    slots = [check_slot(r, index) for r in replies]
    failed = next((why for text, why in slots if text is None), None)
    return Verdict(None, failed) if failed else Verdict(
        scaffold_rationale(context, [text for text, _ in slots], index, items), KEPT)


def generate_reasoning(spec: JobSpec, examples: Sequence[Example], index: SidIndex, items: Mapping[int, dict],
                       teacher: Teacher, batch_size: int = 32, max_context: int = MAX_CONTEXT) -> dict:
    """Ask the teacher about every example (cached replies are not asked again), filter the replies
    and write the kept records and `report.json` to `spec.layout.reasoning`; returns the report."""
    words = {i: title_words(title_of(items, i)) for i in index.items()}
    contexts = [prune_history(ex.history, ex.target, index.sids, words, max_context) for ex in examples]
    scaffold = spec.sft.reasoning.format == "scaffold"
    if scaffold:  # three one-sentence questions per example (sft.reasoning_scaffold)
        asks = [scaffold_questions(c, ex.target, index, items) for c, ex in zip(contexts, examples)]
    else:
        asks = [[teacher_prompt(c, ex.target, index, items)] for c, ex in zip(contexts, examples)]
    flat, asked = teacher_data.ask(KIND, [p for a in asks for p in a], teacher, spec.layout.reasoning, batch_size)
    replies = iter(flat)
    verdicts = [judged([next(replies) for _ in a], teacher.max_tokens,
                       (lambda *rs: _scaffold_verdict(rs, context, index, items)) if scaffold
                       else (lambda r: check_reply(r, ex.history, ex.target, index, words)))
                for a, ex, context in zip(asks, examples, contexts)]
    rows = [{"user": ex.user, "history": list(ex.history), "target": ex.target, "context": list(context),
             "rationale": v.text} for ex, context, v in zip(examples, contexts, verdicts) if v.text is not None]
    return teacher_data.write(
        spec, KIND, teacher, spec.layout.reasoning, RECORDS_FILE, rows, verdicts, asked, len(flat),
        format=spec.sft.reasoning.format, mean_history=round(sum(len(ex.history) for ex in examples) / max(1, len(examples)), 2),
        mean_context=round(sum(map(len, contexts)) / max(1, len(contexts)), 2))


def read_records(spec: JobSpec) -> list[ReasoningRecord]:
    """The records `gream teach` kept, for SFT (MissingArtefact, exit 2, when absent or stale)."""
    return [ReasoningRecord(tuple(r["history"]), r["target"], r["rationale"])
            for r in teacher_data.read(spec, KIND, spec.layout.reasoning, RECORDS_FILE)]
