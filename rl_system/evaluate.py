"""Evaluation of a trained stage on valid and test, by the spec's `eval.backend`: the torch beam in
this process (the default on CPUs) or the rollout workers' vLLM engines; both rank alike.

- direct mode: trie-constrained beam of width `eval.beam_width` -> Recall@K and NDCG@K over the
  full catalog (every beam candidate is a real SID, so the ranking is over items).
- sampling: `eval.pass_samples` completions per user at temperature 0.7 / top-p 0.9 in the spec's
  `rl.mode` (reasoning: free thought, then the SID constrained after `<answer>`) -> Pass@K with the
  unbiased estimator 1 - C(n-c, K) / C(n, K), plus the share of well-formed answers.
- `eval.modes` adds reasoning (beam after a greedy thought, + Pass@K sampled in reasoning mode) and
  think_ahead (beam under the thought's first SID tokens) by rl_system.answer_modes, each with its
  engine seconds per user, under eval.json's "modes".
- `eval.rerank.path` (generate, then re-rank): every mode's beam is `eval.rerank.width` wide and
  re-ordered by that SASRec (rl_system.rerank), its best `eval.beam_width` ranked; eval.json's
  "meta" names the teacher, weight and width. Pass@K samples and is not re-ranked.

`gream eval SPEC` evaluates every trained stage present (sft, rl) and writes `<stage>/eval.json` and
the per-user beam ranks beside it, `<stage>/ranks.json` (ranks-<mode>.json for the other modes;
cluster.eval_record). With the training split, each mode's figures also hold the beyond-accuracy
metrics of the users' top-K lists (K = max(eval.ks); sft.beyond_accuracy), and ranks.json the lists
and each user's values.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from cluster.checkpoint import file_digest
from cluster.errors import BadRequest, MissingArtefact
from cluster.eval_record import RankRecord, split_ranks, write_eval
from cluster.eval_spec import EvalSpec
from cluster.logs import fields
from cluster.rerank_spec import POPULARITY
from cluster.spec import JobSpec
from indexing.dataset import Example, split_from_spec
from indexing.segments import Popularity, segment_masks
from indexing.sid import SidIndex
from rl_system.answer_modes import AnswerConfig, Answers, Reranker, answer, check_think_ahead
from rl_system.rerank import PopularityPrior
from rl_system.reward.functions import sid_of
from sft.beyond_accuracy import EMPTY, Catalogue, per_user, summary
from sft.metrics import metrics_from_ranks, rank_of, segment_report
from sft.prompts import EvalPrompts, build_prompts
from sft.related import related_table

log = logging.getLogger(__name__)

PASS_USERS_SEED = 0  # the same Pass@K users for every model evaluated on a split
CHUNK = 256  # users per remote call: keeps progress visible and the workers evenly loaded


def sample_users(examples: Sequence[Example], users: int, seed: int) -> list[Example]:
    """`users` examples drawn without replacement (all when there are fewer), in split order."""
    if users >= len(examples):
        return list(examples)
    pick = np.random.default_rng(seed).choice(len(examples), users, replace=False)
    return [examples[i] for i in sorted(pick)]


def pass_at_k(n: int, c: np.ndarray, k: int) -> np.ndarray:
    """Unbiased pass@k per example from n samples with c correct (Chen et al. 2021)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    c = np.asarray(c)
    return np.array([1.0 - math.comb(n - ci, k) / math.comb(n, k) for ci in c.tolist()])


def _in_chunks(pool, method: str, prompts: list, desc: str, **kwargs) -> list:
    """Call a pool method over chunks of prompts (each chunk sharded over the workers), with progress."""
    size = CHUNK * pool.num_workers
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


def rerank_teacher(spec: JobSpec):
    """eval.rerank.path's SASRec (rl_system.reward.teacher.Teacher), or the training split's
    inverse-popularity prior (path "popularity"); None when re-ranking is off; refused (exit 2 naming
    the key) unless it is a scorer of this catalogue that loads."""
    path = spec.eval.rerank.path
    if path is None:
        return None
    from indexing.dataset import load_from_spec
    from rl_system.reward.teacher import Teacher
    from sft.sasrec_scorer import check_teacher

    dataset = load_from_spec(spec)
    num_items = dataset.num_items
    if path == POPULARITY:
        return PopularityPrior(Popularity.from_train(split_from_spec(spec, dataset).train, num_items + 1).counts)
    check_teacher(path, num_items, spec.data.name, where="eval.rerank.path")
    try:
        return Teacher(path, num_items, spec.data.name)
    except BadRequest as exc:
        raise BadRequest(f"eval.rerank.path: {exc}") from exc


def reranker(e: EvalSpec, teacher, token_to_item) -> Reranker | None:
    """`teacher` (rerank_teacher) re-ranking by the spec's eval.rerank; None without one."""
    return None if teacher is None else Reranker(teacher, e.rerank.weight, e.rerank.width, token_to_item)


def beam_ranks(pool, prompts: EvalPrompts, token_to_item, width: int) -> np.ndarray:
    """0-based rank of each target in its trie-constrained beam of `width` items, -1 when absent."""
    direct_only = AnswerConfig(width, think_tokens=0, ahead_tokens=0, answer_open_id=None)
    return mode_answers(pool, direct_only, "direct", prompts, None, token_to_item, width)[0]


def mode_answers(pool, acfg: AnswerConfig, mode: str, direct: EvalPrompts, reasoning: EvalPrompts | None,
                 token_to_item, k: int) -> tuple[np.ndarray, np.ndarray]:
    """0-based rank of each target among its candidates in answer mode `mode` (-1 when absent), and
    each user's top-k items (EMPTY past the candidates)."""
    run = _answer_modes(pool, acfg, [mode], direct, reasoning, token_to_item, None)[mode]
    return np.array(run.ranks, dtype=np.int64), run.top(k)


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
    """What evaluation needs from the spec: the `eval` section, the RL mode the Pass@K sampling of
    the top-level figures uses, and each mode's completion budget."""

    eval: EvalSpec
    mode: str
    max_tokens: int  # of a sampled completion in `mode`: the thought's budget (reasoning) plus the SID's
    reasoning_tokens: int  # of a reasoning-mode completion, whatever `mode`

    @classmethod
    def from_spec(cls, spec: JobSpec) -> "EvalConfig":
        return cls(spec.eval, spec.rl.mode, spec.rl.completion_tokens, spec.rl.reasoning_tokens)


@dataclass
class _ModeRun:
    """One answer mode over one split: each user's rank and the engine seconds, summed over chunks."""

    ranks: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    ranked: list[list[int]] = field(default_factory=list)  # each user's candidates' items, best first

    def add(self, answers: Answers, targets: Sequence[int], token_to_item) -> None:
        for a, target in zip(answers.answers, targets):
            ranked = [token_to_item(c.token_ids) for c in a.candidates]
            if any(item is None for item in ranked):
                raise RuntimeError("a beam candidate is not a real SID: the trie constraint is broken")
            self.ranks.append(rank_of(ranked, target))
            self.ranked.append(ranked)
        for key, secs in answers.seconds.items():
            self.seconds[key] = self.seconds.get(key, 0.0) + secs

    def latency(self, users: int) -> dict[str, float]:
        """Seconds per user: `latency_s` is what a request waits (online), think_ahead's thought pass
        is `latency_s/offline`."""
        names = {"online": "latency_s", "offline": "latency_s/offline"}
        return {names[k]: v / max(1, users) for k, v in self.seconds.items()}

    def top(self, k: int) -> np.ndarray:
        """[users, k] item ids, EMPTY where a user's beam held fewer than k items."""
        return np.array([(r + [EMPTY] * k)[:k] for r in self.ranked], dtype=np.int64).reshape(len(self.ranked), k)


def _answer_modes(pool, acfg: AnswerConfig, modes: Sequence[str], direct: EvalPrompts, reasoning: EvalPrompts | None,
                  token_to_item, histories: Sequence[Sequence[int]] | None) -> dict[str, _ModeRun]:
    """Every mode over the users, chunk by chunk; reasoning and think_ahead share one greedy thought.
    `histories`: the users' items, for acfg.rerank."""
    runs = {mode: _ModeRun() for mode in modes}
    size = CHUNK * pool.num_workers
    for start in tqdm(range(0, len(direct.targets), size), desc=f"eval {'/'.join(modes)}", unit="chunk", leave=False):
        end = start + size
        thoughts = None
        for mode in modes:
            answers = answer(pool, acfg, mode, direct.prompt_ids[start:end],
                             reasoning.prompt_ids[start:end] if reasoning else None, thoughts,
                             histories[start:end] if histories is not None else None)
            thoughts = answers.thoughts or thoughts
            runs[mode].add(answers, direct.targets[start:end], token_to_item)
    return runs


def evaluate(cfg: EvalConfig, pool, tokenizer, index: SidIndex, splits: dict[str, Sequence[Example]],
             sampling: bool = True, train: Sequence[Example] | None = None,
             related: np.ndarray | None = None, embeddings: np.ndarray | None = None,
             teacher=None) -> tuple[dict, RankRecord]:
    """Metrics per split, e.g. {"valid": {"recall@10": ...}, "test": {...}}, and the beam rank of
    every user's target (ranks.json), of the direct mode; without `sampling`, the beam metrics only
    (Pass@K sampling costs `eval.pass_samples` times the beam's generation). With the `train`
    split, also the beam metrics per long-tail segment (indexing.segments) under "segments", each
    example's segments in the ranks, and the beyond-accuracy metrics of the top-K lists (with the
    items' text `embeddings`, their intra-list distance too). `related`: sft.related's table, which
    the model's prompts carried in training. The other modes of `eval.modes` go under "modes"
    (README, "Evaluation modes"), their ranks in the record's `modes`. `teacher`: eval.rerank's
    (rerank_teacher), which re-ranks every mode's beam."""
    e = cfg.eval
    k = max(e.ks)
    catalogue = Catalogue.build(train, index.num_items, index, embeddings) if train is not None else None
    token_to_item = token_mapper(tokenizer, index)
    if "think_ahead" in e.modes:
        check_think_ahead(e.think_ahead_tokens, index.depth)
    acfg = AnswerConfig.build(e, cfg.reasoning_tokens, tokenizer, reranker(e, teacher, token_to_item))
    out: dict = {} if teacher is None else {"meta": {"rerank": e.rerank.model_dump()}}
    ranks: dict[str, dict] = {mode: {} for mode in e.modes}
    for name, examples in splits.items():
        examples = list(examples)[: e.max_users] if e.max_users else list(examples)
        direct = build_prompts(tokenizer, index, examples, False, related)
        reasoning = build_prompts(tokenizer, index, examples, True, related) if (
            len(e.modes) > 1 or cfg.mode == "reasoning") else None
        segments = segment_masks(examples, train) if train is not None else None
        sampled: dict[str, dict] = {}

        def sample(mode: str) -> dict:  # Pass@K in a sampling mode, drawn once per split
            if sampling and mode not in sampled:
                rows = sample_users(examples, e.pass_users or len(examples), PASS_USERS_SEED)
                built = reasoning if mode == "reasoning" else direct
                # Every user: the prompts built above; a sample: only its own.
                prompts = built if built is not None and len(rows) == len(examples) else build_prompts(
                    tokenizer, index, rows, mode == "reasoning", related)
                sampled[mode] = sampling_metrics(
                    pool, prompts, index, mode, e.pass_samples, e.temperature,
                    e.top_p, cfg.reasoning_tokens if mode == "reasoning" else cfg.max_tokens, e.ks)
                sampled[mode]["pass_users"] = len(rows)
            return sampled.get(mode, {})

        histories = [list(ex.history) for ex in examples]
        for mode, run in _answer_modes(pool, acfg, e.modes, direct, reasoning, token_to_item, histories).items():
            top = run.top(k) if catalogue is not None else None
            values = per_user(top, catalogue, k) if catalogue is not None else {}
            ranks[mode][name] = split_ranks([ex.user for ex in examples], run.ranks, e.beam_width, segments, top, values)
            metrics = metrics_from_ranks(ranks[mode][name].ranks, e.ks)
            if catalogue is not None:
                metrics.update(summary(values, top, catalogue.items, k))
            if mode == "direct":
                metrics.update(sample(cfg.mode))
            if mode == "reasoning":
                metrics.update(sample("reasoning"))
            if mode == "think_ahead":
                metrics["prefix_tokens"] = acfg.ahead_tokens
            metrics.update(users=len(examples), **run.latency(len(examples)))
            (out if mode == "direct" else out.setdefault("modes", {}).setdefault(mode, {}))[name] = metrics
            log.info("evaluated", extra=fields(split=name, mode=mode, **{k: round(v, 4) for k, v in metrics.items()}))
    items = None if catalogue is None else catalogue.items
    record = {mode: RankRecord(e.beam_width, tuple(e.ks), r, items=items) for mode, r in ranks.items()}
    if train is not None:
        out["segments"] = segment_report(ranks["direct"], e.ks)
        for mode in out.get("modes", {}):
            out["modes"][mode]["segments"] = segment_report(ranks[mode], e.ks)
    direct_record = record.pop("direct")
    return out, RankRecord(direct_record.depth, direct_record.ks, direct_record.splits, record, items)


def print_table(title: str, result: dict) -> None:
    tables = {"direct": {k: v for k, v in result.items() if k not in ("segments", "modes", "meta")}}
    tables.update({mode: {k: v for k, v in splits.items() if k != "segments"}
                   for mode, splits in result.get("modes", {}).items()})
    print(f"\n{title}")
    for mode, splits in tables.items():
        widths = {k: max(11, len(k) + 2) for k in next(iter(splits.values())) if k != "users"}
        print(f"{'split':<8}" + "".join(f"{k:>{w}}" for k, w in widths.items()) + (f"  ({mode})" if len(tables) > 1 else ""))
        for split, metrics in splits.items():
            print(f"{split:<8}" + "".join(f"{metrics[k]:>{w}.4f}" for k, w in widths.items()))


def trained_stages(spec: JobSpec) -> list[tuple[str, Path]]:
    found = []
    for stage in ("sft", "rl"):
        model = spec.layout.model(stage)
        if (model / "config.json").exists():
            found.append((stage, model))
    return found


def evaluate_model(spec: JobSpec, model: Path, index: SidIndex, split, sampling: bool = True,
                   teacher=None) -> tuple[dict, RankRecord]:
    """`evaluate` of one model folder on valid and test, on an answerer of its own (`eval.backend`).
    `teacher`: eval.rerank's, loaded here when the spec has one and it is not given."""
    from transformers import AutoTokenizer

    from indexing.build import built_text_embeddings
    from indexing.dataset import load_from_spec
    from rl_system.rollout.torch_answerer import answerer_from_spec

    embeddings = built_text_embeddings(spec, load_from_spec(spec))
    teacher = teacher or rerank_teacher(spec)
    pool = answerer_from_spec(spec, model, index)
    try:
        return evaluate(EvalConfig.from_spec(spec), pool, AutoTokenizer.from_pretrained(model), index,
                        {"valid": split.valid, "test": split.test}, sampling, split.train, related_table(spec),
                        embeddings, teacher)
    finally:
        pool.shutdown()


def run(spec: JobSpec) -> dict:
    from cluster.placement import init_ray

    stages = trained_stages(spec)
    if not stages:
        raise MissingArtefact(f"nothing to evaluate: no trained model under {spec.layout.model('sft')} "
                                f"or {spec.layout.model('rl')}; run the sft stage first")
    from indexing.build import index_path

    index = SidIndex.load(index_path(spec))
    if "think_ahead" in spec.eval.modes:  # before any engine starts
        check_think_ahead(spec.eval.think_ahead_tokens, index.depth, spec.source)
    teacher = rerank_teacher(spec)
    init_ray(spec.cluster)
    split = split_from_spec(spec)
    results = {}
    done: dict[tuple[str, ...], tuple[dict, RankRecord]] = {}  # weights -> their evaluation
    for stage, model in stages:
        # rl/model is the SFT weights, byte for byte, when no RL step beat them on validation: its
        # evaluation is the SFT's, not a second one (with reasoning modes, minutes of sampling).
        weights = tuple(file_digest(p)["sha256"] for p in sorted(model.glob("*.safetensors")))
        if weights in done:
            log.info("same weights as a stage already evaluated: its evaluation is reused", extra=fields(stage=stage))
        else:
            done[weights] = evaluate_model(spec, model, index, split, teacher=teacher)
        result, ranks = done[weights]
        write_eval(spec.layout.stage(stage), result, ranks)
        print_table(f"{stage}: {model}", result)
        results[stage] = result
    return results
