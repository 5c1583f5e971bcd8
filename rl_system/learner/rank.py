"""One learner rank: a Ray actor holding its shard of the DeepSpeed engine and the frozen reference.

One `train_step` is one optimizer step on a batch of scored completions: the learner recomputes the
old-policy and reference logprobs itself (no gradient), then runs the PPO clipped loss with k3 KL
over micro-batches and steps. The loss is a token-level mean over the *whole* batch across ranks
and micro-batches: each micro-batch divides its token sum by the global token count / W, and
DeepSpeed's gradient averaging over W ranks completes the mean.

Sequence layout: each row is [left pad, prompt, completion, right pad] with prompts left-padded to
the longest prompt, so every completion starts at the same column and one `logits_to_keep` slice
holds all the logits the loss needs. Position ids count real tokens only, as vLLM does.
"""
from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from cluster import device as device_mod
from cluster import ranks
from cluster.deepspeed_group import join_deepspeed_group
from cluster.logs import fields
from rl_system import losses
from rl_system.learner.batching import Packed, completion_logits, micro_batches, pack
from rl_system.learner.config import LearnerConfig, deepspeed_config
from rl_system.messages import TrainBatch

log = logging.getLogger(__name__)


@dataclass
class MicroBatchLoss:
    loss: torch.Tensor  # what backward runs on
    ppo: losses.LossOutput  # the policy-gradient and KL terms, over the sampled rows
    ce: float | None  # the CE anchor's token-mean over `anchor_count` (None: off)
    rollout_logp: torch.Tensor | None  # the rollout logprobs, the learner's own where no engine sampled


def micro_batch_loss(cfg: LearnerConfig, logits: torch.Tensor, packed: Packed, old_logp: torch.Tensor,
                     ref_logp: torch.Tensor | None, token_count: float, anchor_count: float) -> MicroBatchLoss:
    """One micro-batch's loss: `cfg.pg_coef` times the clipped surrogate and KL over the sampled rows
    (token means over `token_count`), plus `cfg.ce_coef` times the anchor rows' cross-entropy (over
    `anchor_count`)."""
    logp = losses.token_logprobs(logits, packed.targets, cfg.temperature)
    # A row no engine sampled (an injected target) takes the learner's own old logprobs.
    rollout_logp = (None if packed.rollout_logp is None else
                    torch.where(torch.isnan(packed.rollout_logp), old_logp, packed.rollout_logp))
    out = losses.ppo_loss(logp, old_logp, packed.advantages, packed.sampled_mask, cfg.clip_low, cfg.clip_high,
                          ref_logp=ref_logp, kl_coef=cfg.kl_coef, rollout_logp=rollout_logp, tis_cap=cfg.tis_cap,
                          token_count=token_count)
    policy = cfg.pg_coef * out.loss
    if not (cfg.ce_coef and anchor_count):
        return MicroBatchLoss(policy, out, None, rollout_logp)
    plain = logp if cfg.temperature == 1.0 else losses.token_logprobs(logits, packed.targets)
    ce = losses.ce_anchor(plain, packed.anchor_mask, anchor_count)
    return MicroBatchLoss(policy + cfg.ce_coef * ce, out, ce.item(), rollout_logp)


class Learner:
    """One rank of the learner group. Every public method that touches the model is collective:
    call it on all ranks (LearnerGroup does)."""

    def __init__(self, config: LearnerConfig, rank: int = 0, world_size: int = 1):
        self.config = config
        self.rank = rank
        self.world_size = world_size
        self.placement = device_mod.resolve(config.device)

    def rendezvous(self) -> tuple[str, int]:
        return ranks.rendezvous()

    def setup(self, master_addr: str = "127.0.0.1", master_port: int | None = None) -> None:
        """Join the DeepSpeed group (collective: all ranks at once) and build policy and reference."""
        config, rank, world_size = self.config, self.rank, self.world_size
        ranks.set_rank_env(rank, world_size, master_addr, master_port or ranks.free_port())
        join_deepspeed_group(self.placement, config.collective_timeout_s, own_port=master_port is None)
        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.integrations import HfDeepSpeedConfig

        torch.manual_seed(config.seed)
        self.device = self.placement.torch_device()
        dtype = torch.bfloat16 if self.placement.is_gpu else torch.float32
        self.ds_config = deepspeed_config(config, self.placement)
        # With ZeRO-3, this object (kept alive) makes from_pretrained load straight into partitions.
        self._hf_ds = HfDeepSpeedConfig(self.ds_config) if config.zero_stage == 3 else None
        self.tokenizer = AutoTokenizer.from_pretrained(config.model_path)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        policy = AutoModelForCausalLM.from_pretrained(config.model_path, dtype=dtype)
        self.engine, *_ = deepspeed.initialize(model=policy, model_parameters=[p for p in policy.parameters()
                                                                               if p.requires_grad],
                                               config=self.ds_config)
        self.reference = self._load_reference(dtype)
        self.steps = 0
        log.info("learner rank ready", extra=fields(rank=rank, world=world_size, zero=config.zero_stage,
                                                     device=str(self.device), model=config.model_path))

    def _load_reference(self, dtype: torch.dtype):
        import deepspeed
        from transformers import AutoModelForCausalLM

        ref = AutoModelForCausalLM.from_pretrained(self.config.model_path, dtype=dtype)
        ref.requires_grad_(False)
        if self.config.zero_stage == 3:
            # Partitioned like the policy (no optimizer): each rank holds 1/W of the reference too.
            ref_config = {"train_micro_batch_size_per_gpu": self.config.micro_batch_size,
                          "zero_optimization": {"stage": 3}, "bf16": {"enabled": self.placement.is_gpu}}
            ref_engine, *_ = deepspeed.initialize(model=ref, config=ref_config)
            ref_engine.eval()  # DeepSpeedEngine.eval returns None, unlike Module.eval
            return ref_engine
        return ref.to(self.device).eval()

    # --- logprobs -----------------------------------------------------------------------------

    @torch.no_grad()
    def _frozen_logprobs(self, model, parts: list[TrainBatch]) -> list[torch.Tensor]:
        out = []
        for part in parts:
            packed = pack(part, self.device, self.pad_id)
            logits = completion_logits(model, packed)
            out.append(losses.token_logprobs(logits, packed.targets, self.config.temperature))
        return out

    def logprobs(self, batch: TrainBatch, num_micro: int | None = None) -> list[list[float]]:
        """Current policy logprobs of every completion token (at the rollout temperature)."""
        parts, real = micro_batches(batch, self.config.micro_batch_size, num_micro)
        self.engine.eval()
        values = self._frozen_logprobs(self.engine, parts)
        self.engine.train()
        rows = []
        for part, logp in zip(parts[:real], values):
            rows.extend(logp[i, :len(c)].tolist() for i, c in enumerate(part.completion_ids))
        return rows

    # --- training -----------------------------------------------------------------------------

    def train_step(self, batch: TrainBatch, token_count: float | None = None, num_micro: int | None = None,
                   anchor_count: float | None = None) -> dict:
        """One optimizer step. token_count / num_micro / anchor_count come from LearnerGroup when W > 1:
        the global sampled-token count divided by W, the micro-batch count every rank must run, and
        the global anchor-token count divided by W (the CE term's denominator, `rl.ce_coef`)."""
        cfg = self.config
        parts, _ = micro_batches(batch, cfg.micro_batch_size, num_micro)
        token_count = token_count if token_count is not None else batch.num_tokens()
        anchor_count = anchor_count if anchor_count is not None else batch.num_anchor_tokens()
        self.engine.eval()
        old = self._frozen_logprobs(self.engine, parts)
        self.engine.train()
        ref = self._frozen_logprobs(self.reference, parts)
        self.engine.set_train_batch_size(len(parts) * cfg.micro_batch_size * self.world_size)
        sums = {"pg_loss": 0.0, "kl": 0.0, "entropy": 0.0, "clip_fraction": 0.0, "ratio": 0.0, "tis_weight": 0.0,
                "logprob_diff": 0.0}
        tokens = anchor_tokens = ce_sum = 0.0
        for i, (part, old_logp, ref_logp) in enumerate(zip(parts, old, ref)):
            # Explicit: DeepSpeed's own boundary test counts micro-steps modulo a gas that changes per step.
            self.engine.set_gradient_accumulation_boundary(i == len(parts) - 1)
            packed = pack(part, self.device, self.pad_id)
            logits = completion_logits(self.engine, packed)
            step = micro_batch_loss(cfg, logits, packed, old_logp, ref_logp, token_count, anchor_count)
            out, sampled, rollout_logp = step.ppo, packed.sampled_mask, step.rollout_logp
            if step.ce is not None:
                ce_sum += step.ce * anchor_count
                anchor_tokens += packed.anchor_mask.sum().item()
            self.engine.backward(step.loss, scale_wrt_gas=False)
            self.engine.step()
            n = sampled.sum().item()
            tokens += n
            # pg_loss and kl came back divided by token_count; undo that to accumulate token sums.
            sums["pg_loss"] += out.pg_loss * max(token_count, 1.0)
            sums["kl"] += out.kl * max(token_count, 1.0)
            with torch.no_grad():
                sums["entropy"] += losses.masked_mean(losses.token_entropy(logits, cfg.temperature), sampled).item() * n
                if rollout_logp is not None:
                    diff = (old_logp - rollout_logp).abs()
                    sums["logprob_diff"] += losses.masked_mean(diff, sampled).item() * n
            sums["clip_fraction"] += out.clip_fraction * n
            sums["ratio"] += out.ratio_mean * n
            sums["tis_weight"] += out.tis_weight_mean * n
        self.steps += 1
        grad_norm = self.engine.get_global_grad_norm()
        metrics = {k: v / max(tokens, 1.0) for k, v in sums.items()}
        metrics["loss"] = cfg.pg_coef * (metrics["pg_loss"] + cfg.kl_coef * metrics["kl"])
        if cfg.ce_coef:
            metrics["ce"] = ce_sum / max(anchor_tokens, 1.0)
            metrics["anchor_tokens"] = anchor_tokens
            metrics["loss"] += cfg.ce_coef * metrics["ce"]
        if batch.rollout_logprobs is None:
            del metrics["logprob_diff"]  # mean |learner - rollout| logprob: unknown without rollout logprobs
        metrics.update(tokens=tokens, grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                       step=self.steps, lr=cfg.lr)
        return metrics

    # --- validation ---------------------------------------------------------------------------

    def set_validator(self, validator) -> None:
        """This rank's sft.validation.Validator (its share of the validation users)."""
        self.validator = validator

    def validation_answers(self, all_cores: bool = False) -> tuple[list[int], list[list[int]]]:
        """Each of this rank's validation users' target rank in the current policy's beam (eval
        mode: no dropout), and the beam's items. Under ZeRO-3 every rank holds the same users, as
        each forward gathers. `all_cores`: nothing else runs meanwhile (synchronous RL), so the beam
        may use every core this process may run on, not only the rank's share of Ray's CPUs."""
        if self.validator is None:  # fewer users than ranks
            return [], []
        threads = torch.get_num_threads()
        if all_cores and not self.placement.is_gpu:
            torch.set_num_threads(max(threads, len(os.sched_getaffinity(0))))
        self.engine.eval()
        try:
            ranks, items = self.validator.answers(self.engine.module, self.device)
            return ranks.tolist(), items.tolist()
        finally:
            self.engine.train()
            torch.set_num_threads(threads)

    # --- weights out --------------------------------------------------------------------------

    def named_parameters_for_push(self) -> list[tuple[str, torch.Tensor]] | None:
        """Full (unpartitioned) parameters in Hugging Face names on rank 0, None elsewhere.

        Under ZeRO-3 each parameter is gathered in turn (a collective), so peak extra memory is one
        parameter, not the model.
        """
        out = []
        for name, param in self.engine.module.named_parameters():
            if self.config.zero_stage == 3:
                import deepspeed

                with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                    if self.rank == 0:
                        out.append((name, param.data.detach().clone()))
            elif self.rank == 0:
                out.append((name, param.detach()))
        return out if self.rank == 0 else None

    def init_weight_sender(self, master_addr: str, port: int, world_size: int, **kwargs) -> None:
        """Rank 0 joins the weight-push group as its sender (blocks until every receiver joined)."""
        if self.rank != 0:
            return
        from rl_system.weight_sync.sender import WeightSender

        # After a failed push, live receivers still wait on the old group's broadcasts; closing its
        # sockets now (collected, as a failed push's traceback may have kept it in a cycle) fails
        # those waits at once rather than after the group's timeout, so they can join the new group.
        self.weight_sender = None
        gc.collect()
        self.weight_sender = WeightSender(master_addr, port, world_size, backend=self.placement.dist_backend,
                                          device=self.device, **kwargs)
        self.weight_sender.connect()

    def push_weights(self, version: int, receivers: Sequence[Any]) -> dict | None:
        """Send the current weights to every rollout worker (collective under ZeRO-3); rank 0 returns stats."""
        named = self.named_parameters_for_push()
        if self.rank != 0:
            return None
        if getattr(self, "weight_sender", None) is None:
            raise RuntimeError("push_weights before init_weight_sender on learner rank 0")
        return vars(self.weight_sender.push(named, version, receivers))

    def save_hf(self, path: str | Path) -> str | None:
        """Write a Hugging Face folder (model + tokenizer) from rank 0 that vLLM and transformers load."""
        named = self.named_parameters_for_push()
        if self.rank != 0:
            return None
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().cpu().clone() for name, tensor in named}
        self.engine.module.save_pretrained(path, state_dict=state, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        return str(path)

    def save_checkpoint(self, directory: str | Path, client_state: dict | None = None) -> None:
        """DeepSpeed state (partitioned weights, optimizer, step) under `directory`, every rank its part."""
        state = {"learner_steps": self.steps, **(client_state or {})}
        self.engine.save_checkpoint(str(directory), tag="learner", client_state=state)
        device_mod.save_rng(directory, self.rank, self.device)

    def load_checkpoint(self, directory: str | Path) -> dict:
        path, client_state = self.engine.load_checkpoint(str(directory), tag="learner")
        if path is None:
            raise FileNotFoundError(f"{directory}: no DeepSpeed checkpoint with tag 'learner' to resume from")
        self.steps = int(client_state.get("learner_steps", 0))
        if device_mod.rng_path(directory, self.rank).exists():
            device_mod.set_rng_state(device_mod.load_rng(directory, self.rank), self.device)
        else:  # written before checkpoints kept the RNG: the run goes on, no longer bit-for-bit
            log.warning("checkpoint has no RNG state for this rank; dropout will not repeat the uninterrupted run",
                        extra=fields(path=str(directory), rank=self.rank))
        return client_state
