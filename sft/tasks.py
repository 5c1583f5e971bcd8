"""SFT examples from the dataset split and the SID index (DESIGN.md section 3), tokenised with loss
on the answer (and, with `history_loss`, on every history SID of a seqrec prompt).

Alignment tasks: seqrec (SID history -> next SID), item2index (title -> SID), index2item
(SID -> title), fusion_title (SID history -> next title), fusion_sid (title history -> next SID),
preference (SID history -> teacher-written preference summary, sft/preference_data.py). Reasoning
examples (teacher CoT, sft/reasoning_data.py) are rendered here so both kinds share one prompt family.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from cluster.errors import GreamError
from cluster.logs import fields
from indexing.dataset import Example
from indexing.sid import SidIndex
from sft.prompts import (
    TEMPLATES,
    TITLE_SEPARATOR,
    HistoryWriter,
    RenderedExample,
    reasoning_answer,
    related_sids,
    render_completion,
    render_prompt,
    seqrec_instruction,
    sid_history,
    uses_bare_prompts,
)

log = logging.getLogger(__name__)

MAX_TITLE_CHARS = 120
FUSION_SID_HISTORY = 3  # titles are long; the most recent few carry the signal
IGNORE_INDEX = -100
# Tasks that read item titles; the teacher's reasoning records need them too (item_text_problem).
TEXT_TASKS = ("item2index", "index2item", "fusion_title", "fusion_sid", "preference")


class TaskError(GreamError):
    """A task that cannot be built from the data it is given."""


@dataclass(frozen=True)
class ReasoningRecord:
    """A teacher-written rationale for one (history, target) pair."""

    history: tuple[int, ...]
    target: int
    rationale: str


@dataclass(frozen=True)
class TokenizedExample:
    task: str
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on prompt tokens
    items: tuple[int, ...] = ()  # RenderedExample.items


def title_of(items: dict[int, dict], item: int) -> str | None:
    title = items.get(item, {}).get("title")
    if not isinstance(title, str) or not title.strip():
        return None
    return " ".join(title.split())[:MAX_TITLE_CHARS]


def item_text_problem(tasks: Sequence[str], reasoning: bool, has_titles: bool, missing: str) -> str | None:
    """Why the requested tasks (and, with `reasoning`, the teacher's reasoning records) cannot be
    built on a dataset without item titles, or None. `missing` says what is absent (the item file, or
    the title field in it)."""
    wanted = [t for t in tasks if t in TEXT_TASKS]
    keys = ([f"sft.tasks {wanted}"] if wanted else []) + (["sft.reasoning.enabled"] if reasoning else [])
    if has_titles or not keys:
        return None
    verb = "need" if len(keys) > 1 else "needs"
    return (f"{' and '.join(keys)} {verb} item titles, but {missing}. Keep sft.tasks to seqrec and "
            "sft.reasoning.enabled false on this data, or give its items titles")


def longest_history(examples: Iterable[Example]) -> dict[int, Example]:
    """Each user's training example with the longest history (the latest, on a tie): what the
    preference task renders and what the teacher summarised."""
    longest: dict[int, Example] = {}
    for ex in examples:
        if len(ex.history) >= len(longest.get(ex.user, ex).history):
            longest[ex.user] = ex
    return longest


def _render(tokenizer, task: str, instruction: str, answer: str, items: tuple[int, ...] = ()) -> RenderedExample:
    return RenderedExample(task, render_prompt(tokenizer, instruction), render_completion(tokenizer, instruction, answer),
                           items)


class AlignmentBuilder:
    """Renders the alignment tasks for one tokenizer, index and item catalogue; templates are
    drawn with a seeded generator so a rebuild gives the same examples. Histories are written as
    the tokenizer's model reads them (SIDs, or item tokens: sft.prompts.HistoryWriter)."""

    def __init__(self, tokenizer, index: SidIndex, items: dict[int, dict], seed: int = 0,
                 related: np.ndarray | None = None):
        self.tok = tokenizer
        self.index = index
        self.writer = HistoryWriter.for_model(tokenizer, index)
        self.bare = uses_bare_prompts(tokenizer)
        self.related = related  # sft.related: similar items written into next-item prompts
        self.items = items
        self.rng = random.Random(f"tasks:{seed}")
        self.catalogue = index.items()  # items the item tasks cover

    def restricted_to(self, items: Sequence[int]) -> "AlignmentBuilder":
        self.catalogue = sorted(items)
        return self

    def _template(self, task: str) -> str:
        return self.rng.choice(TEMPLATES[task])

    def _history(self, history: Sequence[int]) -> str:
        return sid_history(self.writer.history(history))

    def seqrec(self, examples: Iterable[Example]) -> list[RenderedExample]:
        out = []
        for ex in examples:
            template = self.rng.randrange(len(TEMPLATES["seqrec"]))
            instruction = seqrec_instruction(self.writer.history(ex.history), template, False,
                                             related_sids(self.writer, self.related, ex.history), self.bare)
            out.append(_render(self.tok, "seqrec", instruction, self.index.text(ex.target), (*ex.history, ex.target)))
        return out

    def item2index(self) -> list[RenderedExample]:
        return [_render(self.tok, "item2index", self._template("item2index").format(title=title), self.index.text(i))
                for i in self.catalogue if (title := title_of(self.items, i))]

    def index2item(self) -> list[RenderedExample]:
        return [_render(self.tok, "index2item", self._template("index2item").format(sid=self.index.text(i)), title)
                for i in self.catalogue if (title := title_of(self.items, i))]

    def fusion_title(self, examples: Sequence[Example], count: int) -> list[RenderedExample]:
        out = []
        for ex in self.sample(examples, count):
            title = title_of(self.items, ex.target)
            if title:
                instruction = self._template("fusion_title").format(history=self._history(ex.history))
                out.append(_render(self.tok, "fusion_title", instruction, title))
        return out

    def fusion_sid(self, examples: Sequence[Example], count: int) -> list[RenderedExample]:
        out = []
        for ex in self.sample(examples, count):
            titles = [t for i in ex.history[-FUSION_SID_HISTORY:] if (t := title_of(self.items, i))]
            if titles:
                instruction = self._template("fusion_sid").format(titles=TITLE_SEPARATOR.join(titles))
                out.append(_render(self.tok, "fusion_sid", instruction, self.index.text(ex.target)))
        return out

    def preference(self, examples: Sequence[Example], summaries: dict[int, str]) -> list[RenderedExample]:
        """One example per user with a summary, on that user's longest training history."""
        longest = longest_history(ex for ex in examples if ex.user in summaries)
        return [_render(self.tok, "preference", self._template("preference").format(history=self._history(ex.history)),
                        summaries[user]) for user, ex in sorted(longest.items())]

    def reasoning(self, records: Iterable[ReasoningRecord]) -> list[RenderedExample]:
        out = []
        for rec in records:
            instruction = seqrec_instruction(self.writer.history(rec.history), 0, True,
                                             related_sids(self.writer, self.related, rec.history))
            out.append(_render(self.tok, "reasoning", instruction, reasoning_answer(rec.rationale, self.index.text(rec.target))))
        return out

    def sample(self, rows: Sequence, count: int) -> list:
        return self.rng.sample(list(rows), min(count, len(rows)))


def by_user(train: Sequence[Example]) -> dict[int, list[Example]]:
    """Each user's training examples, in split order (oldest prefix first)."""
    out: dict[int, list[Example]] = {}
    for ex in train:
        out.setdefault(ex.user, []).append(ex)
    return out


def covering_windows(train: Sequence[Example]) -> list[Example]:
    """The fewest training examples whose histories and targets, together, hold every training
    target once: with the history supervised too, each user's longest example already teaches every
    transition in its window (as SASRec trains on every position), so the shorter prefixes only
    repeat it. Walks each user's examples back from the last; relies on the split's layout, where a
    user's training examples are the consecutive prefixes of the sequence, the i-th predicting item
    i+1 from the (capped) items before it."""
    out = []
    for rows in by_user(train).values():
        i = len(rows) - 1
        while i >= 0:
            out.append(rows[i])
            i -= len(rows[i].history) + 1
    return out


def answer_prefixes(train: Sequence[Example], per_user: int, seed: int) -> list[Example]:
    """`per_user` training examples of each user drawn at random (seeded, without replacement), to
    add to the covering windows: more targets in the answer slot, on shorter histories too."""
    users = by_user(train)
    rng = random.Random(f"answer-prefixes:{seed}")
    return [ex for user in sorted(users) for ex in rng.sample(users[user], min(per_user, len(users[user])))]


def build_alignment(builder: AlignmentBuilder, tasks: Sequence[str], train: Sequence[Example],
                    preferences: dict[int, str] | None = None, limit: int | None = None,
                    history_loss: bool = False, extra_answers: int = 0, seed: int = 0) -> list[RenderedExample]:
    """All alignment examples for the requested tasks. Fusion tasks get one example per catalogue
    item, sampled from the training examples, so the item-text tasks stay in proportion. `limit`
    caps every task (a seeded sample), for quick runs. With `history_loss`, seqrec renders only the
    covering windows (see `covering_windows`) plus `extra_answers` random prefixes per user."""
    if extra_answers and not history_loss:
        raise TaskError("sft.answer_prefixes adds prefixes to the covering windows of sft.history_loss; "
                        "without history_loss every prefix is trained already: set it to 0")
    seqrec_rows = covering_windows(train) + answer_prefixes(train, extra_answers, seed) if history_loss else train
    # The preference task renders the history the teacher summarised (each user's longest), so its
    # cap samples users, not examples.
    all_train = train
    if limit is not None:
        seqrec_rows = builder.sample(seqrec_rows, limit)
        train = builder.sample(train, limit)
        builder = builder.restricted_to(builder.sample(builder.index.items(), limit))
    has_titles = any(title_of(builder.items, i) for i in builder.index.items())
    if problem := item_text_problem(tasks, False, has_titles, "the dataset has none (NAME.item.json)"):
        raise TaskError(problem)
    per_item = min(len(builder.catalogue), limit or len(builder.catalogue))
    makers = {
        "seqrec": lambda: builder.seqrec(seqrec_rows),
        "item2index": builder.item2index,
        "index2item": builder.index2item,
        "fusion_title": lambda: builder.fusion_title(train, per_item),
        "fusion_sid": lambda: builder.fusion_sid(train, per_item),
        "preference": lambda: builder.preference(all_train, _require_preferences(preferences, builder, limit)),
    }
    out: list[RenderedExample] = []
    for task in tasks:
        if task not in makers:
            raise TaskError(f"sft.tasks: '{task}' is not a task; expected one of {sorted(makers)}")
        made = makers[task]()
        log.info("task examples", extra=fields(task=task, examples=len(made)))
        out.extend(made)
    return out


def _require_preferences(preferences: dict[int, str] | None, builder: AlignmentBuilder,
                         limit: int | None) -> dict[int, str]:
    if not preferences:
        raise TaskError("sft.tasks includes 'preference' but no teacher-written preference summaries were given "
                        "(gream teach SPEC writes them)")
    return preferences if limit is None else dict(builder.sample(sorted(preferences.items()), limit))


def tokenize(tokenizer, examples: Sequence[RenderedExample], max_len: int,
             history_tokens: frozenset[int] = frozenset()) -> list[TokenizedExample]:
    """Prompt and completion are tokenised apart, both without the tokenizer's own special tokens:
    the chat template already wrote every marker the backbone needs, and RL and evaluation tokenise
    prompts the same way. Examples longer than max_len are dropped, not cut, because a cut prompt
    is a different task. In a seqrec prompt, tokens in `history_tokens` (the SID tokens, or the item
    tokens) are supervised too: each history item is then a next-item target given the items before it.
    A bare seqrec answer's end-of-turn is not (sft.prompt: bare): after a whole SID it would pull
    against the next history item's first code, and the trie allows nothing else there anyway."""
    out, dropped = [], 0
    open_end = uses_bare_prompts(tokenizer)
    prompts = tokenizer([e.prompt for e in examples], add_special_tokens=False)["input_ids"] if examples else []
    completions = tokenizer([e.completion for e in examples], add_special_tokens=False)["input_ids"] if examples else []
    for ex, p, c in zip(examples, prompts, completions):
        if len(p) + len(c) > max_len:
            dropped += 1
            continue
        dense = history_tokens if ex.task == "seqrec" else frozenset()
        prompt_labels = [t if t in dense else IGNORE_INDEX for t in p]
        labels = c[:-1] + [IGNORE_INDEX] if open_end and ex.task == "seqrec" else c
        out.append(TokenizedExample(ex.task, p + c, prompt_labels + labels, ex.items))
    if dropped:
        log.warning("dropped over-long examples", extra=fields(dropped=dropped, max_len=max_len))
    return out
