"""Answering users in the three inference modes (DESIGN.md section 6), one code path for `gream eval`
(rl_system.evaluate) and `gream serve` (gream.serve), so the served answers are the evaluated ones.

- direct: the trie-constrained beam of width W from the direct prompt.
- reasoning: one greedy (temperature 0) completion of the reasoning prompt in reasoning mode (the
  thought, budget forced, then a SID), and the beam of width W continuing after its `<answer>` token:
  prompt + thought + `</think><answer>` (Rollout-Beam's expansion, rl_system.groups).
- think_ahead (OneRec-Think's deployment): the same greedy thought, computed offline, fixes the
  first k SID tokens it wrote after `<answer>`; online, the beam of width W from the direct prompt
  completes SIDs under that prefix only, so a target outside it is a miss.

Latency is the wall time of the engine calls: `online` is what a request waits for; think_ahead's
thought pass is `offline` (done ahead of the request in deployment).

With a Reranker (eval.rerank), each mode's beam is `rerank.width` wide and its candidates are
re-ordered by the teacher (rl_system.rerank), W of them kept; the teacher's time counts as online.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from cluster.eval_spec import ANSWER_MODES, EvalSpec
from cluster.spec import SpecError
from rl_system.messages import BeamCandidate, Completion
from rl_system.rerank import rerank_order
from rl_system.rollout.constraint import ANSWER_OPEN, THINK_CLOSE, THINK_OPEN

MODES = ANSWER_MODES


@dataclass(frozen=True)
class AnswerConfig:
    width: int  # beam width: candidates per user
    think_tokens: int  # max_tokens of the greedy reasoning completion: thought budget + answer
    ahead_tokens: int  # think_ahead: SID tokens taken from the thought
    answer_open_id: int | None  # the `<answer>` token; None: a model without reasoning tags
    rerank: Reranker | None = None  # generate rerank.width, answer the teacher's best `width` of them

    @classmethod
    def build(cls, e: EvalSpec, reasoning_tokens: int, tokenizer, rerank: Reranker | None = None) -> "AnswerConfig":
        """`e`: the spec's eval section; `reasoning_tokens`: rl.reasoning_tokens."""
        return cls(e.beam_width, reasoning_tokens, e.think_ahead_tokens, tokenizer.get_vocab().get(ANSWER_OPEN), rerank)

    @property
    def beam_width(self) -> int:
        return self.width if self.rerank is None else self.rerank.width


def check_think_ahead(k: int, sid_depth: int, source: str | None = None) -> None:
    """`eval.think_ahead_tokens` must leave the online pass at least one SID token; the SID depth is
    known only once the index is loaded, so this runs where it is (eval and serve start)."""
    if k >= sid_depth:
        raise SpecError(f"{source or 'spec'}: key 'eval.think_ahead_tokens': {k} must be below the SID depth "
                        f"({sid_depth} tokens), so the online pass completes at least one")


@dataclass(frozen=True)
class Thoughts:
    """The greedy reasoning completions of a batch of users and the seconds they took."""

    completions: list[Completion]
    seconds: float


@dataclass(frozen=True)
class Answer:
    candidates: list[BeamCandidate]  # best first; whole SIDs as token ids (think_ahead: prefix included)
    thought: Completion | None = None  # reasoning, think_ahead
    prefix: tuple[int, ...] = ()  # think_ahead: the SID tokens the thought fixed


@dataclass(frozen=True)
class Answers:
    answers: list[Answer]
    seconds: dict[str, float]  # "online" (+ "offline" for think_ahead): wall seconds of the engine calls
    thoughts: Thoughts | None = field(default=None, repr=False)  # to reuse for another mode of the same users


@dataclass(frozen=True)
class Reranker:
    """eval.rerank, loaded (rl_system.evaluate.reranker): the teacher that re-scores each
    user's beam of `width` candidates, policy log p + `weight` x teacher log p."""

    teacher: object  # rl_system.reward.teacher.Teacher
    weight: float
    width: int
    to_item: Callable[[Sequence[int]], int | None]  # a candidate's token ids -> its item

    def apply(self, answers: Sequence[Answer], histories: Sequence[Sequence[int]], depth: int) -> list[Answer]:
        """The answers with their candidates re-ordered, the best `depth` kept."""
        width = max((len(a.candidates) for a in answers), default=0)
        if width == 0:  # no user has a candidate (thoughts that never answered): nothing to score
            return list(answers)
        items = np.full((len(answers), width), -1, dtype=np.int64)
        policy = np.zeros((len(answers), width))
        for row, a in enumerate(answers):
            named = [self.to_item(c.token_ids) for c in a.candidates]
            if any(item is None for item in named):
                raise RuntimeError("a beam candidate is not a real SID: the trie constraint is broken")
            items[row, :len(named)] = named
            policy[row, :len(named)] = [c.logprob for c in a.candidates]
        order = rerank_order(items, policy, self.teacher.candidate_logp(histories, items), self.weight, depth)
        return [replace(a, candidates=[a.candidates[j] for j in row if j >= 0]) for a, row in zip(answers, order.tolist())]


def answer_start(completion_ids: Sequence[int], answer_open_id: int) -> int | None:
    """Where the SID of a reasoning completion starts: just after its `<answer>` token; None when
    the completion never opened an answer."""
    ids = list(completion_ids)
    return ids.index(answer_open_id) + 1 if answer_open_id in ids else None


def through_answer_open(prompt_ids: Sequence[int], completion_ids: Sequence[int], answer_open_id: int) -> list[int] | None:
    """The prompt and the completion up to and including its `<answer>` token: where a beam over the
    answer's SID starts (None without an answer)."""
    cut = answer_start(completion_ids, answer_open_id)
    return None if cut is None else list(prompt_ids) + list(completion_ids[:cut])


def rationale(thought: Completion) -> str:
    """The free text between `<think>` and `</think>`."""
    text = thought.text
    start = text.find(THINK_OPEN)
    start = 0 if start < 0 else start + len(THINK_OPEN)
    end = text.find(THINK_CLOSE, start)
    return text[start:end if end >= 0 else len(text)].strip()


def think(pool, prompts: Sequence[Sequence[int]], cfg: AnswerConfig) -> Thoughts:
    """One greedy reasoning-mode completion per reasoning prompt."""
    start = time.perf_counter()
    groups = pool.generate(list(prompts), n=1, temperature=0.0, max_tokens=cfg.think_tokens, mode="reasoning")
    return Thoughts([g.completions[0] for g in groups], time.perf_counter() - start)


def _beam(pool, prompts: list, width: int, prefixes: list | None = None) -> tuple[dict[int, list], float]:
    """Beams of the rows that have a prompt (None: no answer to expand), by row."""
    rows = [i for i, p in enumerate(prompts) if p is not None]
    start = time.perf_counter()
    chosen = None if prefixes is None else [prefixes[i] for i in rows]
    out = pool.beam([prompts[i] for i in rows], width, prefixes=chosen) if rows else []
    return dict(zip(rows, out)), time.perf_counter() - start


def answer(pool, cfg: AnswerConfig, mode: str, direct: Sequence[Sequence[int]],
           reasoning: Sequence[Sequence[int]] | None = None, thoughts: Thoughts | None = None,
           histories: Sequence[Sequence[int]] | None = None) -> Answers:
    """Each user's candidates in `mode`. `direct` / `reasoning`: the users' prompts (token ids) of
    sft.prompts' two kinds, in one order (`reasoning` unused in direct mode). `thoughts`: these
    users' greedy thoughts when already computed (evaluating reasoning and think_ahead).
    `histories`: the users' item ids, which a `cfg.rerank` teacher reads."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if cfg.rerank is not None and (histories is None or len(histories) != len(direct)):
        raise ValueError("re-ranking (eval.rerank) needs one history per user")
    found = _candidates(pool, cfg, mode, direct, reasoning, thoughts)
    if cfg.rerank is None:
        return found
    start = time.perf_counter()
    ranked = cfg.rerank.apply(found.answers, list(histories), cfg.width)
    return Answers(ranked, {**found.seconds, "online": found.seconds["online"] + time.perf_counter() - start},
                   found.thoughts)


def _candidates(pool, cfg: AnswerConfig, mode: str, direct: Sequence[Sequence[int]],
                reasoning: Sequence[Sequence[int]] | None, thoughts: Thoughts | None) -> Answers:
    """`answer`'s beams of `cfg.beam_width`, in the policy's order."""
    width = cfg.beam_width
    if mode == "direct":
        beams, secs = _beam(pool, list(direct), width)
        return Answers([Answer(beams[i]) for i in range(len(direct))], {"online": secs})
    if reasoning is None or len(reasoning) != len(direct):
        raise ValueError(f"mode {mode} needs one reasoning prompt per user")
    if cfg.answer_open_id is None:
        raise ValueError(f"mode {mode} needs a model with the <answer> token")
    thoughts = thoughts or think(pool, reasoning, cfg)
    done = thoughts.completions
    if len(done) != len(direct):
        raise ValueError(f"got {len(done)} thoughts for {len(direct)} users")
    # Budget forcing makes every completion that ends well formed; one cut short by the context has
    # no answer and gets no candidates (a miss).
    if mode == "reasoning":
        beams, secs = _beam(pool, [through_answer_open(p, t.token_ids, cfg.answer_open_id)
                                   for p, t in zip(reasoning, done)], width)
        return Answers([Answer(beams.get(i, []), t) for i, t in enumerate(done)],
                       {"online": thoughts.seconds + secs}, thoughts)
    cuts = [answer_start(t.token_ids, cfg.answer_open_id) for t in done]
    heads = [() if cut is None else tuple(t.token_ids[cut:cut + cfg.ahead_tokens]) for t, cut in zip(done, cuts)]
    beams, secs = _beam(pool, [list(d) if len(h) == cfg.ahead_tokens else None for d, h in zip(direct, heads)],
                        width, [list(h) for h in heads])
    return Answers([Answer(beams.get(i, []), t, h) for i, (t, h) in enumerate(zip(done, heads))],
                   {"online": secs, "offline": thoughts.seconds}, thoughts)
