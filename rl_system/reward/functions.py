"""Verifiable rewards for generated semantic IDs (DESIGN.md section 4).

Everything here works on code arrays: a batch of N SIDs of depth D is an int64 array [N, D] whose
entry [i, l] is the code of level l (`<a_12>` is code 12 of level 0); -1 marks "no SID" (a
completion that failed the format gate). Parsing text into such arrays is the only per-completion
Python work; scoring a batch is a handful of numpy operations.

Residual reward normalisation. GREAM's official code gives 0.5 / 0.707 / 0.866 / 0.95 / 1.0 for
1 / 2 / 3 / 4 / 5 matched levels of a 5-level SID whose last level is the dedup ordinal. That is
r = (l / H) ** beta with H = the number of *semantic* levels (4 here: the dedup level does not
count), beta = 0.5, and a partial match capped at 0.95: matching all four semantic levels but the
wrong dedup ordinal names a different item, so it earns (4/4) ** 0.5 = 1 capped to 0.95, and only
the exact item earns 1. Without a dedup level H = D and the cap only matters for deep SIDs.
"""
from __future__ import annotations

import functools
import re
import string
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

Mode = Literal["direct", "reasoning"]

PARTIAL_CAP = 0.95  # the most a non-exact SID can earn (official GREAM value, see module doc)

_SID_ONLY = re.compile(r"\s*((?:<[a-z]_\d+>)+)\s*")
# The think body may not hold another think or answer tag: the whole completion must be exactly one
# think block followed by one answer block.
_THINK = r"\s*<think>(?:(?!</?think>|</?answer>).)*</think>\s*"
_REASONING = re.compile(_THINK + r"<answer>\s*((?:<[a-z]_\d+>)+)\s*</answer>\s*", re.DOTALL)


@functools.lru_cache(maxsize=None)
def _gate(mode: Mode, depth: int) -> re.Pattern:
    """One regex per (mode, depth) that applies the format gate, the level order and the depth at
    once and captures the D codes, so parsing a completion is a single C-level match."""
    if not 1 <= depth <= 26:
        raise ValueError(f"SID depth must be in 1..26 (one letter per level), got {depth}")
    sid = "".join(f"<{string.ascii_lowercase[level]}_(\\d+)>" for level in range(depth))
    if mode == "direct":
        return re.compile(rf"\s*{sid}\s*")
    if mode == "reasoning":
        return re.compile(_THINK + rf"<answer>\s*{sid}\s*</answer>\s*", re.DOTALL)
    raise ValueError(f"mode must be 'direct' or 'reasoning', got {mode!r}")


@dataclass(frozen=True)
class ParsedBatch:
    codes: np.ndarray  # int64 [N, D], -1 where format_ok is False
    format_ok: np.ndarray  # bool [N]


@dataclass(frozen=True)
class RewardBatch:
    """Per-completion reward components, all arrays of length N."""

    format_ok: np.ndarray  # bool
    exact: np.ndarray  # bool
    lcp: np.ndarray  # int64, matched levels (prefix length), 0 when format_ok is False
    residual: np.ndarray  # float64
    binary: np.ndarray  # float64
    beam: np.ndarray | None  # float64, best residual reward among beam candidates; None without beams


def sid_codes(sid: str, depth: int) -> np.ndarray | None:
    """Codes of one SID string like `<a_1><b_2><c_3>`, or None unless it has exactly `depth` levels in order."""
    parsed = parse_sids([sid], depth)
    return parsed.codes[0] if parsed.format_ok[0] else None


def sid_of(completion: str, mode: Mode) -> str | None:
    """The SID substring of a completion, or None when the completion fails the format gate."""
    pattern = _SID_ONLY if mode == "direct" else _REASONING
    match = pattern.fullmatch(completion)
    if match is None:
        return None
    return match.group(match.lastindex)


def parse_completions(completions: Sequence[str], mode: Mode, depth: int) -> ParsedBatch:
    """Apply the format gate and parse the SID of each completion into a code row."""
    gate = _gate(mode, depth)
    matches = [gate.fullmatch(text) for text in completions]
    ok = np.fromiter((m is not None for m in matches), dtype=bool, count=len(matches))
    codes = np.full((len(completions), depth), -1, dtype=np.int64)
    if ok.any():
        codes[ok] = np.array([m.groups() for m in matches if m is not None]).astype(np.int64)
    return ParsedBatch(codes, ok)


def parse_sids(sids: Sequence[str], depth: int) -> ParsedBatch:
    """Parse bare SID strings (beam candidates) into code rows."""
    return parse_completions(sids, "direct", depth)


def prefix_match(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Longest common prefix in levels between pred [..., D] and target (broadcastable to pred).

    A -1 in pred never matches, so an unparsed completion has LCP 0.
    """
    equal = (pred == target) & (pred >= 0)
    return np.cumprod(equal, axis=-1).sum(axis=-1).astype(np.int64)


def residual_reward(lcp: np.ndarray, depth: int, semantic_levels: int, beta: float = 0.5,
                    partial_cap: float = PARTIAL_CAP) -> np.ndarray:
    """r = (min(l, H) / H) ** beta, capped at partial_cap unless all `depth` levels match (then 1)."""
    if not 1 <= semantic_levels <= depth:
        raise ValueError(f"semantic_levels must be in [1, depth={depth}], got {semantic_levels}")
    lcp = np.asarray(lcp)
    partial = np.minimum((np.minimum(lcp, semantic_levels) / semantic_levels) ** beta, partial_cap)
    return np.where(lcp >= depth, 1.0, partial)


def score(parsed: ParsedBatch, targets: np.ndarray, semantic_levels: int, beta: float = 0.5,
          beams: np.ndarray | None = None, partial_cap: float = PARTIAL_CAP) -> RewardBatch:
    """All reward components for a parsed batch against target codes [N, D].

    beams: optional candidate codes [N, B, D] (-1 rows for unparsable candidates); the beam reward
    is the best residual reward among a completion's candidates, and 0 if the completion itself
    failed the format gate.
    """
    targets = np.asarray(targets, dtype=np.int64)
    if targets.shape != parsed.codes.shape:
        raise ValueError(f"targets have shape {targets.shape}, expected {parsed.codes.shape} (one SID per completion)")
    depth = targets.shape[1]
    lcp = prefix_match(parsed.codes, targets)
    exact = lcp == depth
    residual = residual_reward(lcp, depth, semantic_levels, beta, partial_cap)
    beam = None
    if beams is not None:
        beams = np.asarray(beams, dtype=np.int64)
        if beams.ndim != 3 or beams.shape[0] != targets.shape[0] or beams.shape[2] != depth:
            raise ValueError(f"beams have shape {beams.shape}, expected [N={targets.shape[0]}, B, D={depth}]")
        beam_lcp = prefix_match(beams, targets[:, None, :])
        best = residual_reward(beam_lcp, depth, semantic_levels, beta, partial_cap).max(axis=1, initial=0.0)
        beam = np.where(parsed.format_ok, best, 0.0)
    return RewardBatch(format_ok=parsed.format_ok, exact=exact, lcp=lcp, residual=residual,
                       binary=exact.astype(np.float64), beam=beam)


def ranking_penalty(hits: np.ndarray, logprobs: np.ndarray) -> np.ndarray:
    """MiniOneRec's rank-aware term for groups [P, G]: 0 for a hit, and in a group that holds a hit,
    -w(r) / sum_j w(j) for a miss at rank r of the policy's own order (highest sequence logprob
    first, ties by position), w(r) = 1 / log2(r + 2). A group without a hit gets 0 throughout: with
    no target among the candidates there is nothing to rank them below."""
    hits = np.asarray(hits, dtype=bool)
    logprobs = np.asarray(logprobs, dtype=np.float64)
    if hits.shape != logprobs.shape or hits.ndim != 2:
        raise ValueError(f"hits {hits.shape} and logprobs {logprobs.shape} must both be [groups, G]")
    weights = 1.0 / np.log2(np.arange(hits.shape[1]) + 2.0)
    order = np.argsort(-logprobs, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(hits.shape[1])[None, :].repeat(len(hits), 0), axis=1)
    penalty = -weights[rank] / weights.sum()
    return np.where(hits | ~hits.any(axis=1, keepdims=True), 0.0, penalty)


TeacherForm = Literal["logprob", "rank", "group_softmax"]


def teacher_reward(form: TeacherForm, logp: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """The teacher's reward for groups [P, G] of completions, from its log-probability of each
    completion's item and the item's 0-based catalogue rank (-inf / -1: no item):
    - logprob: log p_T(item); a completion that names no item gets its group's lowest (0 if none does);
    - rank: 1 / log2(rank + 2), 1 for the teacher's top item, 0 for no item;
    - group_softmax: p_T renormalised over the group's items (softmax of the log-probabilities)."""
    logp = np.asarray(logp, dtype=np.float64)
    rank = np.asarray(rank)
    if logp.ndim != 2 or logp.shape != rank.shape:
        raise ValueError(f"logp {logp.shape} and rank {rank.shape} must both be [groups, G]")
    named = np.isfinite(logp)
    if form == "rank":
        return np.where(rank >= 0, 1.0 / np.log2(np.maximum(rank, 0) + 2.0), 0.0)
    if form == "logprob":
        floor = np.where(named, logp, np.inf).min(axis=1, keepdims=True)
        return np.where(named, logp, np.where(np.isfinite(floor), floor, 0.0))
    if form == "group_softmax":
        top = np.where(named, logp, -np.inf).max(axis=1, keepdims=True)
        weights = np.where(named, np.exp(logp - np.where(np.isfinite(top), top, 0.0)), 0.0)
        total = weights.sum(axis=1, keepdims=True)
        return np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    raise ValueError(f"unknown teacher reward form {form!r}; expected logprob, rank or group_softmax")


def teacher_gate(rule: str, target_logp: np.ndarray, logp: np.ndarray, items: np.ndarray, exact: np.ndarray,
                 uncertain_share: float) -> np.ndarray:
    """Which groups [P] of completions [P, G] get the teacher's reward (AdaGRPO, arXiv 2606.08480: a
    ranker helps where the policy is unsure and the ranker knows better):
    - separates: the teacher puts the target (target_logp [P]) above every negative of the group, a
      named completion that is not the target (logp [P, G], -inf where no item); true without negatives;
    - uncertain: no item (items [P, G], -1 for none) takes more than `uncertain_share` of the group;
    - both: both; none: every group."""
    logp, items, exact = np.asarray(logp, dtype=np.float64), np.asarray(items), np.asarray(exact, dtype=bool)
    negatives = np.where((items >= 0) & ~exact, logp, -np.inf)
    separates = np.asarray(target_logp, dtype=np.float64) > negatives.max(axis=1)
    same = (items[:, :, None] == items[:, None, :]) & (items[:, :, None] >= 0)
    uncertain = same.sum(-1).max(axis=1) <= uncertain_share * items.shape[1]
    gates = {"none": np.ones(len(items), dtype=bool), "separates": separates, "uncertain": uncertain,
             "both": separates & uncertain}
    if rule not in gates:
        raise ValueError(f"unknown teacher gate {rule!r}; expected one of {', '.join(gates)}")
    return gates[rule]


def semantic_levels(index_codes: np.ndarray) -> int:
    """Levels that carry meaning in an index [items, D]: D - 1 if the last level is a dedup ordinal, else D.

    The last level is a dedup ordinal exactly when, in every group of items sharing the first D - 1
    codes, the last codes are 0, 1, ..., size - 1 (the item's position in its collision group).
    A k-means level or an imported tokenizer's level has arbitrary codes there.
    """
    codes = np.asarray(index_codes, dtype=np.int64)
    if codes.ndim != 2 or codes.shape[0] == 0:
        raise ValueError(f"index codes must be a non-empty [items, levels] array, got shape {codes.shape}")
    depth = codes.shape[1]
    if depth < 2:
        return depth
    order = np.lexsort(codes[:, ::-1].T)  # rows sorted by prefix, then by the last code
    rows = codes[order]
    new_group = np.ones(len(rows), dtype=bool)
    new_group[1:] = (rows[1:, :-1] != rows[:-1, :-1]).any(axis=1)
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(rows)), 0))
    ordinal = np.arange(len(rows)) - group_start
    return depth - 1 if np.array_equal(rows[:, -1], ordinal) else depth
