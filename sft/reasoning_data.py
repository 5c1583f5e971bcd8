"""Teacher-written reasoning data for the SFT curriculum (DESIGN.md section 3).

For each selected training example the teacher sees the target and a history pruned to the items
related to it (OneRec-Think's bootstrapping with pruned contexts), and writes the 5-stage chain of
thought: behavioural evidence, latent preferences, intent, recommendation, denoised history. The
student later learns to produce that rationale from the full, noisy history.

Replies go through the teacher client and append-only cache of `indexing.rewrite`, so an
interrupted run resumes and a re-run asks nothing. A reply is kept only if its answer is the target
SID, every SID it writes is a real one, and it cites at least one history item; the counts kept and
dropped (per reason) go to `<run_dir>/sft/reasoning/report.json` beside the kept records.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from cluster.logs import fields
from cluster.spec import JobSpec
from indexing.dataset import Example, load_from_spec, reserve_latest, split_from_spec
from indexing.rewrite import RewriteCache, Teacher, ask_cached, make_teacher
from indexing.sid import SidIndex
from sft.reasoning_scaffold import check_slot
from sft.reasoning_scaffold import questions as scaffold_questions
from sft.reasoning_scaffold import rationale as scaffold_rationale
from sft.tasks import ReasoningRecord, TaskError, title_of

log = logging.getLogger(__name__)

MAX_CONTEXT = 5  # items the teacher sees: enough for a pattern, few enough that none is noise
REPORT_FILE = "report.json"
RECORDS_FILE = "records.jsonl"
CACHE_FILE = "teacher_cache.jsonl"

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
_SID_RUN = re.compile(r"(?:<[a-z]_\d+>)+")  # consecutive level tokens: one written SID


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


@dataclass(frozen=True)
class Verdict:
    rationale: str | None  # None when dropped
    reason: str  # "kept" or why the reply was dropped


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
    if any(index.item_of(sid) is None for sid in _SID_RUN.findall(rationale)):
        return Verdict(None, "unknown_sid")
    said = set(_WORD.findall(rationale.lower()))
    target_words = words.get(target, frozenset())
    for item in history:
        if index.text(item) in rationale:
            return Verdict(rationale, "kept")
        distinct = words.get(item, frozenset()) - target_words
        if distinct and len(distinct & said) >= min(2, len(distinct)):
            return Verdict(rationale, "kept")
    return Verdict(None, "no_citation")


def select_examples(train: Sequence[Example], max_examples: int, seed: int) -> list[Example]:
    """A seeded sample of at most `max_examples`, in split order."""
    if len(train) <= max_examples:
        return list(train)
    picked = random.Random(f"reasoning:{seed}").sample(range(len(train)), max_examples)
    return [train[i] for i in sorted(picked)]


def _line(index: SidIndex, items: Mapping[int, dict], item: int) -> str:
    title = title_of(items, item)
    return f"{index.text(item)} - {title}" if title else index.text(item)


def teacher_prompt(context: Sequence[int], target: int, index: SidIndex, items: Mapping[int, dict]) -> str:
    return PROMPT.format(context="\n".join(_line(index, items, i) for i in context),
                         target=_line(index, items, target), sid=index.text(target))


@dataclass
class ReasoningResult:
    records: list[ReasoningRecord]
    report: dict


def _keys(teacher: Teacher, prompts: Sequence[str]) -> list[str]:
    # The prompt holds the pruned history and the target, so the key names the example, the
    # pruning and the prompt wording: change any of them and the example is asked afresh.
    return [hashlib.sha256(f"{teacher.name}\0{p}".encode()).hexdigest() for p in prompts]


def generate_reasoning(examples: Sequence[Example], index: SidIndex, items: Mapping[int, dict], teacher: Teacher,
                       cache: RewriteCache, out_dir: Path, max_context: int = MAX_CONTEXT,
                       batch_size: int = 32, scaffold: bool = False) -> ReasoningResult:
    """Ask the teacher about every example (cached replies are not asked again), filter the replies
    and write `report.json` and the kept records (`records.jsonl`) to `out_dir`. `scaffold`: the
    teacher answers three one-sentence questions per example instead (sft.reasoning_scaffold)."""
    words = {i: title_words(title_of(items, i)) for i in index.items()}
    contexts = [prune_history(ex.history, ex.target, index.sids, words, max_context) for ex in examples]
    if scaffold:
        asks = [scaffold_questions(c, ex.target, index, items) for c, ex in zip(contexts, examples)]
    else:
        asks = [[teacher_prompt(c, ex.target, index, items)] for c, ex in zip(contexts, examples)]
    keys = [_keys(teacher, a) for a in asks]
    asked = ask_cached([k for ks in keys for k in ks], [p for a in asks for p in a], teacher, cache, batch_size,
                       desc="reasoning")

    records, rows, reasons = [], [], Counter()
    for ex, context, ks in zip(examples, contexts, keys):
        if scaffold:
            slots = [check_slot(cache.entries[k], index) for k in ks]
            failed = next((why for text, why in slots if text is None), None)
            verdict = Verdict(None, failed) if failed else Verdict(
                scaffold_rationale(context, [text for text, _ in slots], index, items), "kept")
        else:
            verdict = check_reply(cache.entries[ks[0]], ex.history, ex.target, index, words)
        reasons[verdict.reason] += 1
        if verdict.rationale is not None:
            records.append(ReasoningRecord(ex.history, ex.target, verdict.rationale))
            rows.append({"user": ex.user, "history": list(ex.history), "target": ex.target,
                         "context": list(context), "rationale": verdict.rationale})
    kept = reasons.pop("kept", 0)
    report = {
        "teacher": teacher.name, "format": "scaffold" if scaffold else "free", "examples": len(examples),
        "asked": asked, "from_cache": sum(map(len, keys)) - asked,
        "kept": kept, "dropped": sum(reasons.values()), "dropped_by_reason": dict(sorted(reasons.items())),
        "mean_history": round(sum(len(ex.history) for ex in examples) / max(1, len(examples)), 2),
        "mean_context": round(sum(map(len, contexts)) / max(1, len(contexts)), 2),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / RECORDS_FILE).open("w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    log.info("reasoning data", extra=fields(**{k: v for k, v in report.items() if k != "dropped_by_reason"},
                                            **{f"dropped_{k}": v for k, v in reasons.items()}))
    if examples and not records:
        log.warning("the teacher's replies were all dropped (%s); see %s", dict(reasons), out_dir / REPORT_FILE)
    return ReasoningResult(records, report)


def reasoning_dir(spec: JobSpec) -> Path:
    return spec.layout.reasoning


def build_reasoning_data(spec: JobSpec, batch_size: int = 32) -> list[ReasoningRecord]:
    """Reasoning records for `sft.stage.run`, or [] when `sft.reasoning.enabled` is false.

    The teacher is `sft.reasoning.endpoint` serving the model named `sft.reasoning.teacher`, or,
    without an endpoint, a local vLLM engine over the Hugging Face folder `sft.reasoning.teacher`.
    """
    from indexing.build import index_path

    rs = spec.sft.reasoning
    if not rs.enabled:
        return []
    path = index_path(spec)
    if not path.exists():
        raise TaskError(f"{path}: no SID index; run the index stage first (gream index SPEC)")
    index = SidIndex.load(path)
    ds = load_from_spec(spec)
    if not any(title_of(ds.items, i) for i in index.items()):
        log.warning("dataset %s has no item titles: the teacher sees bare SIDs and can cite only those", ds.name)
    train, _ = reserve_latest(split_from_spec(spec, ds).train, spec.sft.reserve_for_rl)
    examples = select_examples(train, rs.max_examples, spec.sft.seed)
    teacher = make_teacher(spec, rs.endpoint, rs.teacher, rs.max_tokens, "sft.reasoning", "teacher")
    out_dir = reasoning_dir(spec)
    return generate_reasoning(examples, index, ds.items, teacher, RewriteCache(out_dir / CACHE_FILE), out_dir,
                              batch_size=batch_size, scaffold=rs.format == "scaffold").records
