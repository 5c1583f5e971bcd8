"""Evaluation of a trained stage on valid and test, with the rollout workers' vLLM engines.

- direct mode: trie-constrained beam of width `eval.beam_width` -> Recall@K and NDCG@K over the
  full catalog (every beam candidate is a real SID, so the ranking is over items).
- sampling: `eval.pass_samples` completions per user at temperature 0.7 / top-p 0.9 in the spec's
  `rl.mode` (reasoning: free thought, then the SID constrained after `<answer>`) -> Pass@K with the
  unbiased estimator 1 - C(n-c, K) / C(n, K), plus the share of well-formed answers.

`gream eval SPEC` evaluates every trained stage present (sft, rl) and writes `<stage>/eval.json` and
the per-user beam ranks beside it, `<stage>/ranks.json` (cluster.eval_record).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from cluster.errors import MissingArtefact
from cluster.eval_record import RankRecord, split_ranks, write_eval
from cluster.logs import fields
from cluster.spec import EvalSpec, JobSpec
from indexing.dataset import Example, split_from_spec
from indexing.segments import segment_masks
from indexing.sid import SidIndex
from rl_system.reward.functions import sid_of
from sft.metrics import metrics_from_ranks, rank_of, segment_report
from sft.prompts import EvalPrompts, build_prompts
from sft.related import related_table

log = logging.getLogger(__name__)

CHUNK = 256  # users per remote call: keeps progress visible and the workers evenly loaded


def pass_at_k(n: int, c: np.ndarray, k: int) -> np.ndarray:
    """Unbiased pass@k per example from n samples with c correct (Chen et al. 2021)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    c = np.asarray(c)
    return np.array([1.0 - math.comb(n - ci, k) / math.comb(n, k) for ci in c.tolist()])


def _in_chunks(pool, method: str, prompts: list, desc: str, **kwargs) -> list:
    """Call a pool method over chunks of prompts (each chunk sharded over the workers), with progress."""
    size = CHUNK * len(pool.workers)
    out = []
    for start in tqdm(range(0, len(prompts), size), desc=desc, unit="chunk", leave=False):
        out.extend(getattr(pool, method)(prompts[start:start + size], **kwargs))
    return out


def token_mapper(tokenizer, index: SidIndex):
    """token ids of a SID -> its item id (None for a sequence that names no item)."""
    vocab_items = {tok_id: tok for tok, tok_id in tokenizer.get_vocab().items()}

    def token_to_item(token_ids):
        return index.item_of([vocab_items.get(t, "") for t in token_ids])

    return token_to_item


def beam_ranks(pool, prompts: EvalPrompts, token_to_item, width: int) -> np.ndarray:
    """0-based rank of each target in its trie-constrained beam of `width` items, -1 when absent."""
    results = _in_chunks(pool, "beam", prompts.prompt_ids, "beam eval", width=width)
    ranked = [[token_to_item(c.token_ids) for c in cands] for cands in results]
    invalid = sum(item is None for r in ranked for item in r)
    if invalid:
        raise RuntimeError(f"{invalid} beam candidates are not real SIDs: the trie constraint is broken")
    return np.array([rank_of(r, t) for r, t in zip(ranked, prompts.targets)], dtype=np.int64)


def beam_metrics(pool, prompts: EvalPrompts, token_to_item, width: int, ks: Sequence[int]) -> dict:
    return metrics_from_ranks(beam_ranks(pool, prompts, token_to_item, width), ks)


def sampling_metrics(pool, prompts: EvalPrompts, index: SidIndex, mode: str, n: int,
                     temperature: float, top_p: float, max_tokens: int, ks: Sequence[int]) -> dict:
    groups = _in_chunks(pool, "generate", prompts.prompt_ids, f"pass@k ({mode})",
                        n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, mode=mode)
    correct = np.zeros(len(groups), dtype=np.int64)
    well_formed = 0
    for row, (group, target) in enumerate(zip(groups, prompts.targets)):
        for c in group.completions:
            sid = sid_of(c.text, mode)
            well_formed += sid is not None and index.item_of(sid) is not None
            correct[row] += sid is not None and index.item_of(sid) == target
    out = {f"pass@{k}": float(pass_at_k(n, correct, k).mean()) for k in ks if k <= n}
    out["format_ok"] = well_formed / max(1, n * len(groups))
    return out


@dataclass(frozen=True)
class EvalConfig:
    """What evaluation needs from the spec: the `eval` section and the RL mode it samples in."""

    eval: EvalSpec
    mode: str
    max_tokens: int  # of a sampled completion: the thought's budget (reasoning) plus the SID's

    @classmethod
    def from_spec(cls, spec: JobSpec) -> "EvalConfig":
        return cls(spec.eval, spec.rl.mode, spec.rl.completion_tokens)


def evaluate(cfg: EvalConfig, pool, tokenizer, index: SidIndex, splits: dict[str, Sequence[Example]],
             sampling: bool = True, train: Sequence[Example] | None = None,
             related: np.ndarray | None = None) -> tuple[dict, RankRecord]:
    """Metrics per split, e.g. {"valid": {"recall@10": ...}, "test": {...}}, and the beam rank of
    every user's target (ranks.json); without `sampling`, the beam metrics only (Pass@K sampling
    costs `eval.pass_samples` times the beam's generation). With the `train` split, also the beam
    metrics per long-tail segment (indexing.segments) under "segments", and each example's segments
    in the ranks. `related`: sft.related's table, which the model's prompts carried in training."""
    e = cfg.eval
    token_to_item = token_mapper(tokenizer, index)
    reasoning = cfg.mode == "reasoning"
    out, ranks = {}, {}
    for name, examples in splits.items():
        examples = list(examples)[: e.max_users] if e.max_users else list(examples)
        direct = build_prompts(tokenizer, index, examples, False, related)
        ranks[name] = split_ranks([ex.user for ex in examples], beam_ranks(pool, direct, token_to_item, e.beam_width),
                                  e.beam_width, segment_masks(examples, train) if train is not None else None)
        metrics = metrics_from_ranks(ranks[name].ranks, e.ks)
        if sampling:
            sampled = build_prompts(tokenizer, index, examples, reasoning, related) if reasoning else direct
            metrics.update(sampling_metrics(pool, sampled, index, cfg.mode, e.pass_samples, e.temperature,
                                            e.top_p, cfg.max_tokens, e.ks))
        metrics["users"] = len(examples)
        out[name] = metrics
        log.info("evaluated", extra=fields(split=name, **{k: round(v, 4) for k, v in metrics.items()}))
    if train is not None:
        out["segments"] = segment_report(ranks, e.ks)
    return out, RankRecord(e.beam_width, tuple(e.ks), ranks)


def print_table(title: str, result: dict) -> None:
    splits = {name: metrics for name, metrics in result.items() if name != "segments"}
    keys = [k for k in next(iter(splits.values())) if k != "users"]
    print(f"\n{title}")
    print(f"{'split':<8}" + "".join(f"{k:>11}" for k in keys))
    for split, metrics in splits.items():
        print(f"{split:<8}" + "".join(f"{metrics[k]:>11.4f}" for k in keys))


def trained_stages(spec: JobSpec) -> list[tuple[str, Path]]:
    found = []
    for stage in ("sft", "rl"):
        model = spec.layout.model(stage)
        if (model / "config.json").exists():
            found.append((stage, model))
    return found


def evaluate_model(spec: JobSpec, model: Path, index: SidIndex, split, sampling: bool = True) -> tuple[dict, RankRecord]:
    """`evaluate` of one model folder on valid and test, on a rollout pool of its own."""
    from transformers import AutoTokenizer

    from rl_system.rollout.pool import RolloutPool

    pool = RolloutPool.from_spec(spec, model, index)
    try:
        return evaluate(EvalConfig.from_spec(spec), pool, AutoTokenizer.from_pretrained(model), index,
                        {"valid": split.valid, "test": split.test}, sampling, split.train, related_table(spec))
    finally:
        pool.shutdown()


def run(spec: JobSpec) -> dict:
    from cluster.placement import init_ray

    stages = trained_stages(spec)
    if not stages:
        raise MissingArtefact(f"nothing to evaluate: no trained model under {spec.layout.model('sft')} "
                                f"or {spec.layout.model('rl')}; run the sft stage first")
    init_ray(spec.cluster)
    from indexing.build import index_path

    index = SidIndex.load(index_path(spec))
    split = split_from_spec(spec)
    results = {}
    for stage, model in stages:
        result, ranks = evaluate_model(spec, model, index, split)
        write_eval(spec.layout.stage(stage), result, ranks)
        print_table(f"{stage}: {model}", result)
        results[stage] = result
    return results
