"""One round of grouped sampling: prompts -> G completions each -> rewards, and the train batch.

The driver's loop calls `GroupSampler.sample(n)` through dynamic sampling; each call draws the next
`n` prompts from the data cursor, fills each prompt's group on the rollout pool with samples, beam
candidates or both (`rl.rollout`), optionally expands Rollout-Beam candidates after `<answer>`, and
scores everything in one request to the reward service (plus the ranking term, `rl.rank_penalty`,
and the rewards beyond accuracy, `rl.objectives`).
"""
from __future__ import annotations

import hashlib
import time
from collections import defaultdict

import numpy as np

from cluster.spec import RlSpec
from rl_system import advantages
from rl_system.answer_modes import through_answer_open
from rl_system.messages import Completion, Prompt, RewardReply, RolloutGroup, ScoredGroup, TrainBatch
from rl_system.prompt_source import PromptSource
from rl_system.reward.functions import ranking_penalty, teacher_gate, teacher_reward
from rl_system.reward.objectives import objective_rewards
from rl_system.reward.pool import RewardPool
from rl_system.rollout.pool import RolloutPool
from rl_system.seeding import request_seed


class GroupSampler:
    def __init__(self, rl: RlSpec, pool: RolloutPool, rewards: RewardPool, source: PromptSource, answer_open_id: int | None):
        self.rl = rl
        self.pool = pool
        self.rewards = rewards
        self.source = source
        self.answer_open_id = answer_open_id
        self.seconds: dict[str, float] = defaultdict(float)
        self.all_groups: list[ScoredGroup] = []  # every group scored this step, kept or dropped

    def reset(self) -> None:
        self.seconds.clear()
        self.all_groups = []

    def _beam_candidates(self, groups: list[RolloutGroup], texts_of) -> list[list[str]]:
        """Rollout-Beam: for each completion, the best `beam_width` SIDs after its `<answer>` token."""
        width = self.rl.beam_width
        prompts, owners = [], []
        for g, group in enumerate(groups):
            for c, comp in enumerate(group.completions):
                start = through_answer_open(group.prompt_ids, comp.token_ids, self.answer_open_id)
                if start is not None:
                    prompts.append(start)
                    owners.append((g, c))
        # A completion that never opened an answer fails the format gate; an empty beam keeps its reward 0.
        beams = [[[""] * width for _ in group.completions] for group in groups]
        for (g, c), cands in zip(owners, self.pool.beam(prompts, width) if prompts else []):
            beams[g][c] = [texts_of(cand.token_ids) for cand in cands] + [""] * (width - len(cands))
        return [b for group_beams in beams for b in group_beams]

    def _rollouts(self, prompts: list[Prompt]) -> list[RolloutGroup]:
        """Each prompt's group: `rl.rollout` decides how many completions are sampled and how many are
        the policy's top SIDs by trie-constrained beam search (distinct items, best first)."""
        rl = self.rl
        n_beam = {"sample": 0, "beam": rl.group_size, "mixed": round(rl.beam_share * rl.group_size)}[rl.rollout]
        n_sample = rl.group_size - n_beam
        tokenizer = self.source.tokenizer
        ids = tokenizer([p.text for p in prompts], add_special_tokens=False)["input_ids"]
        groups = [RolloutGroup(list(i), [], self.pool.version) for i in ids]
        if n_sample:
            groups = self.pool.generate(ids, n=n_sample, temperature=rl.temperature, max_tokens=rl.completion_tokens,
                                        mode=rl.mode, seeds=[request_seed(rl.seed, p.uid) for p in prompts])
        if n_beam:
            for group, cands in zip(groups, self.pool.beam([g.prompt_ids for g in groups], n_beam)):
                if len(cands) < n_beam:
                    raise RuntimeError(f"beam of width {n_beam} found {len(cands)} SIDs: the catalogue is "
                                       "smaller than the group; lower rl.group_size or rl.beam_share")
                # The trie forces EOS after a complete SID, so its constrained logprob is 0.
                group.completions.extend(
                    Completion([*c.token_ids, tokenizer.eos_token_id], tokenizer.decode(c.token_ids),
                               [*c.token_logprobs, 0.0], "stop") for c in cands)
        if rl.inject_target:
            for prompt, group in zip(prompts, groups):
                inject_target(group, prompt, tokenizer.eos_token_id, tokenizer.decode)
        return groups

    def sample(self, n: int) -> list[ScoredGroup]:
        rl = self.rl
        prompts = self.source.next(n)
        start = time.perf_counter()
        groups = self._rollouts(prompts)
        beams = None
        if rl.reward == "beam":
            beams = self._beam_candidates(groups, self.source.tokenizer.decode)
        self.seconds["rollout"] += time.perf_counter() - start

        start = time.perf_counter()
        texts = [c.text for g in groups for c in g.completions]
        targets = [p.target for p in prompts for _ in range(rl.group_size)]
        histories = [p.history for p in prompts for _ in range(rl.group_size)] if rl.teacher else None
        reply: RewardReply = self.rewards.score(texts, targets, beams=beams, mode=rl.mode, histories=histories)
        self.seconds["reward"] += time.perf_counter() - start

        chosen = {"residual": reply.residual, "binary": reply.binary, "beam": reply.beam}[rl.reward]
        shape = (len(prompts), rl.group_size)
        if rl.teacher:
            logp = reply.teacher_logp.reshape(shape)
            gate = teacher_gate(rl.teacher.gate, reply.teacher_target_logp.reshape(shape)[:, 0], logp,
                                reply.item.reshape(shape), reply.exact.reshape(shape), rl.teacher.uncertain_share)
            chosen = chosen + rl.teacher.weight * (
                gate[:, None] * teacher_reward(rl.teacher.form, logp, reply.teacher_rank.reshape(shape))).ravel()
        if rl.rank_penalty:
            seq_logprobs = sequence_logprobs(groups).reshape(shape)
            chosen = chosen + rl.rank_penalty * ranking_penalty(reply.exact.reshape(shape), seq_logprobs).ravel()
        chosen = chosen + objective_rewards(rl.objectives, reply, rl.group_size)
        gates = gate.tolist() if rl.teacher else [None] * len(prompts)
        out = [ScoredGroup(p, g, r, h, lcp, f, t) for p, g, r, h, lcp, f, t in zip(
            prompts, groups, chosen.reshape(shape), reply.exact.reshape(shape), reply.lcp.reshape(shape),
            reply.format_ok.reshape(shape), gates)]
        self.all_groups.extend(out)
        return out


def inject_target(group: RolloutGroup, prompt: Prompt, end_id: int, decode) -> bool:
    """A group that does not hold the prompt's target gets it in place of its last completion
    (MiniOneRec's add_gt, ReCast), so the group carries a positive. No engine sampled it: its
    logprobs are NaN, and the learner's own forward gives its old logprobs (importance ratio 1 at
    the first micro-step, truncated-IS weight 1). Returns whether it injected."""
    target = [*prompt.target_ids, end_id]
    if any(c.token_ids == target for c in group.completions):
        return False
    group.completions[-1] = Completion(target, decode(list(prompt.target_ids)), [float("nan")] * len(target), "stop")
    return True


def sequence_logprobs(groups) -> np.ndarray:
    """Each completion's summed logprob, flat in group order; an injected target (NaN logprobs: no
    engine sampled it) gets -inf, the policy's lowest, for the ranking term and the pairwise advantage."""
    sums = np.array([sum(c.logprobs) for g in groups for c in g.completions])
    return np.where(np.isnan(sums), -np.inf, sums)


def train_batch(groups: list[ScoredGroup], estimator: str, k: int, anchor_end: int | None = None) -> TrainBatch:
    """Advantages per completion (group-relative) and the rows the learner trains on. `anchor_end`
    (the end token; `rl.ce_coef` > 0): one more row per group, its target SID, for the CE anchor."""
    rewards = np.stack([g.rewards for g in groups])
    hits = np.stack([g.hits for g in groups])
    adv = advantages.compute(estimator, rewards, hits, k,
                             sequence_logprobs([g.rollout for g in groups]).reshape(rewards.shape))
    prompt_ids, completion_ids, values, logprobs = [], [], [], []
    for group, row in zip(groups, adv):
        for comp, a in zip(group.rollout.completions, row):
            prompt_ids.append(group.rollout.prompt_ids)
            completion_ids.append(comp.token_ids)
            values.append(float(a))
            logprobs.append(comp.logprobs)
    anchor = [False] * len(values)
    if anchor_end is not None:
        for group in groups:
            target = [*group.prompt.target_ids, anchor_end]
            prompt_ids.append(group.rollout.prompt_ids)
            completion_ids.append(target)
            values.append(0.0)
            logprobs.append([float("nan")] * len(target))
            anchor.append(True)
    return TrainBatch(prompt_ids, completion_ids, values, logprobs, anchor=anchor)


def rollout_metrics(groups: list[ScoredGroup], depth: int) -> dict:
    """Reward statistics over every group sampled this step (kept or dropped)."""
    rewards = np.concatenate([g.rewards for g in groups])
    hits = np.concatenate([g.hits for g in groups])
    lcp = np.concatenate([g.lcp for g in groups])
    lengths = np.array([len(c.token_ids) for g in groups for c in g.rollout.completions])
    versions = {g.rollout.weight_version for g in groups}
    gated = [g.teacher_gate for g in groups if g.teacher_gate is not None]
    return {
        "reward/mean": float(rewards.mean()),
        "reward/std": float(rewards.std()),
        "hit_rate": float(hits.mean()),
        "format_ok": float(np.concatenate([g.format_ok for g in groups]).mean()),
        "lcp_hist": np.bincount(lcp, minlength=depth + 1).tolist(),
        "completion_len": float(lengths.mean()),
        "rollout/weight_version_min": min(versions),
        "completions": int(len(rewards)),
        "rollout/digest": samples_digest(groups),
        **({"teacher/gate_open": float(np.mean(gated))} if gated else {}),  # share of groups the teacher reached
    }


def samples_digest(groups: list[ScoredGroup]) -> str:
    """A fingerprint of every prompt and completion sampled, in order: two runs drew the same samples
    exactly when their digests agree (the check behind exact resume)."""
    h = hashlib.blake2b(digest_size=8)
    for g in groups:
        h.update(np.asarray(g.rollout.prompt_ids, dtype=np.int64).tobytes() + b"|")
        for c in g.rollout.completions:
            h.update(np.asarray(c.token_ids, dtype=np.int64).tobytes() + b";")
    return h.hexdigest()
