"""The policy learner: W Ray actors forming one DeepSpeed data-parallel group, plus a frozen reference.

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

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from cluster import device as device_mod
from cluster import ranks
from cluster.logs import fields
from rl_system import losses

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LearnerConfig:
    model_path: str
    device: str = "auto"
    lr: float = 2e-5
    zero_stage: int = 2
    offload: bool = False
    micro_batch_size: int = 32
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.001
    tis_cap: float | None = None
    temperature: float = 1.0
    grad_clip: float = 1.0
    seed: int = 0

    @classmethod
    def from_spec(cls, spec, model_path: str | Path) -> "LearnerConfig":
        rl = spec.rl
        return cls(model_path=str(model_path), device=spec.cluster.device, lr=rl.lr, zero_stage=rl.zero_stage,
                   offload=rl.offload, micro_batch_size=rl.micro_batch_size, clip_low=rl.clip_low,
                   clip_high=rl.clip_high, kl_coef=rl.kl_coef, tis_cap=rl.tis_cap, temperature=rl.temperature,
                   seed=rl.seed)


@dataclass
class TrainBatch:
    """Scored completions, one row per completion (a prompt appears once per completion of its group)."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    advantages: list[float]
    rollout_logprobs: list[list[float]] | None = None  # per completion token, from the rollout engine
    loss_mask: list[list[int]] | None = None  # per completion token, 1 = trained; default all ones

    def __post_init__(self) -> None:
        n = len(self.completion_ids)
        for name in ("prompt_ids", "advantages", "rollout_logprobs", "loss_mask"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"TrainBatch.{name} has {len(value)} rows, completion_ids has {n}")
        for name in ("rollout_logprobs", "loss_mask"):
            value = getattr(self, name)
            if value is not None:
                for i, (row, comp) in enumerate(zip(value, self.completion_ids)):
                    if len(row) != len(comp):
                        raise ValueError(f"TrainBatch.{name}[{i}] has {len(row)} entries for {len(comp)} completion tokens")
        for i, (p, c) in enumerate(zip(self.prompt_ids, self.completion_ids)):
            if not p or not c:
                raise ValueError(f"TrainBatch row {i}: prompt and completion must be non-empty "
                                 f"(got {len(p)} prompt and {len(c)} completion tokens)")

    def __len__(self) -> int:
        return len(self.completion_ids)

    def select(self, rows: Sequence[int]) -> "TrainBatch":
        pick = (lambda xs: None if xs is None else [xs[i] for i in rows])
        return TrainBatch(pick(self.prompt_ids), pick(self.completion_ids), pick(self.advantages),
                          pick(self.rollout_logprobs), pick(self.loss_mask))

    def masked_out(self) -> "TrainBatch":
        """The same rows contributing nothing: a filler micro-batch that keeps collectives in step."""
        return replace(self, loss_mask=[[0] * len(c) for c in self.completion_ids])

    def num_tokens(self) -> int:
        if self.loss_mask is None:
            return sum(len(c) for c in self.completion_ids)
        return int(sum(sum(m) for m in self.loss_mask))


@dataclass
class Packed:
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L]
    targets: torch.Tensor  # [B, C] completion tokens
    mask: torch.Tensor  # [B, C] float, 1 on trained completion tokens
    advantages: torch.Tensor  # [B]
    rollout_logp: torch.Tensor | None  # [B, C]


def pack(batch: TrainBatch, device: torch.device, pad_id: int = 0) -> Packed:
    n = len(batch)
    p_max = max(len(p) for p in batch.prompt_ids)
    c_max = max(len(c) for c in batch.completion_ids)
    ids = torch.full((n, p_max + c_max), pad_id, dtype=torch.long)
    attn = torch.zeros((n, p_max + c_max), dtype=torch.long)
    targets = torch.full((n, c_max), pad_id, dtype=torch.long)
    mask = torch.zeros((n, c_max), dtype=torch.float32)
    rollout = None if batch.rollout_logprobs is None else torch.zeros((n, c_max), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(batch.prompt_ids, batch.completion_ids)):
        ids[i, p_max - len(p):p_max] = torch.as_tensor(p)
        ids[i, p_max:p_max + len(c)] = torch.as_tensor(c)
        attn[i, p_max - len(p):p_max + len(c)] = 1
        targets[i, :len(c)] = torch.as_tensor(c)
        mask[i, :len(c)] = 1.0 if batch.loss_mask is None else torch.as_tensor(batch.loss_mask[i], dtype=torch.float32)
        if rollout is not None:
            rollout[i, :len(c)] = torch.as_tensor(batch.rollout_logprobs[i], dtype=torch.float32)
    positions = (attn.cumsum(1) - 1).clamp(min=0)
    to = (lambda t: None if t is None else t.to(device))
    return Packed(to(ids), to(attn), to(positions), to(targets), to(mask),
                  torch.as_tensor(batch.advantages, dtype=torch.float32, device=device), to(rollout))


def completion_logits(model, packed: Packed) -> torch.Tensor:
    """Logits predicting each completion token, [B, C, V]."""
    c = packed.targets.shape[1]
    out = model(input_ids=packed.input_ids, attention_mask=packed.attention_mask, position_ids=packed.position_ids,
                logits_to_keep=c + 1, use_cache=False)
    return out.logits[:, :-1]


def micro_batches(batch: TrainBatch, size: int, count: int | None = None) -> tuple[list[TrainBatch], int]:
    """Split into `count` micro-batches (default: as many as `size` needs); returns (parts, real parts).

    Ranks must run the same number of forward/backward passes (ZeRO collectives run in each), so a
    rank with fewer rows than micro-batches runs masked-out filler parts after its real ones.
    """
    if len(batch) == 0:
        raise ValueError("cannot train on an empty batch")
    count = count or -(-len(batch) // size)
    real = min(count, len(batch))
    parts = [batch.select(rows.tolist()) for rows in np.array_split(np.arange(len(batch)), real)]
    return parts + [batch.select([0]).masked_out()] * (count - real), real


def deepspeed_config(cfg: LearnerConfig, placement: device_mod.Placement) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": placement.is_gpu}
        if cfg.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": placement.is_gpu}
    optimizer_params: dict[str, Any] = {"lr": cfg.lr, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": 1,  # reset per step to the batch's micro-batch count
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": placement.is_gpu},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if not placement.is_gpu:
        # DeepSpeed's fused CPU Adam is a JIT-built op; torch's AdamW needs no compiler.
        optimizer_params["torch_adam"] = True
        config["zero_force_ds_cpu_optimizer"] = False
    config["optimizer"] = {"type": "AdamW", "params": optimizer_params}
    return config


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
        os.environ.setdefault("DS_ACCELERATOR", device_mod.accelerator_name() if self.placement.is_gpu else "cpu")
        ranks.set_rank_env(rank, world_size, master_addr, master_port or ranks.free_port())
        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.integrations import HfDeepSpeedConfig

        deepspeed.init_distributed(dist_backend=self.placement.dist_backend, verbose=False)
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

    def train_step(self, batch: TrainBatch, token_count: float | None = None, num_micro: int | None = None) -> dict:
        """One optimizer step. token_count / num_micro come from LearnerGroup when W > 1: the global
        token count divided by W, and the micro-batch count every rank must run."""
        cfg = self.config
        parts, _ = micro_batches(batch, cfg.micro_batch_size, num_micro)
        token_count = token_count if token_count is not None else batch.num_tokens()
        self.engine.eval()
        old = self._frozen_logprobs(self.engine, parts)
        self.engine.train()
        ref = self._frozen_logprobs(self.reference, parts)
        self.engine.set_train_batch_size(len(parts) * cfg.micro_batch_size * self.world_size)
        sums = {"pg_loss": 0.0, "kl": 0.0, "entropy": 0.0, "clip_fraction": 0.0, "ratio": 0.0, "tis_weight": 0.0,
                "logprob_diff": 0.0}
        tokens = 0.0
        for i, (part, old_logp, ref_logp) in enumerate(zip(parts, old, ref)):
            # Explicit: DeepSpeed's own boundary test counts micro-steps modulo a gas that changes per step.
            self.engine.set_gradient_accumulation_boundary(i == len(parts) - 1)
            packed = pack(part, self.device, self.pad_id)
            logits = completion_logits(self.engine, packed)
            logp = losses.token_logprobs(logits, packed.targets, cfg.temperature)
            out = losses.ppo_loss(logp, old_logp, packed.advantages, packed.mask, cfg.clip_low, cfg.clip_high,
                                  ref_logp=ref_logp, kl_coef=cfg.kl_coef, rollout_logp=packed.rollout_logp,
                                  tis_cap=cfg.tis_cap, token_count=token_count)
            self.engine.backward(out.loss, scale_wrt_gas=False)
            self.engine.step()
            n = packed.mask.sum().item()
            tokens += n
            # pg_loss and kl came back divided by token_count; undo that to accumulate token sums.
            sums["pg_loss"] += out.pg_loss * max(token_count, 1.0)
            sums["kl"] += out.kl * max(token_count, 1.0)
            with torch.no_grad():
                sums["entropy"] += losses.masked_mean(losses.token_entropy(logits, cfg.temperature), packed.mask).item() * n
                if packed.rollout_logp is not None:
                    diff = (old_logp - packed.rollout_logp).abs()
                    sums["logprob_diff"] += losses.masked_mean(diff, packed.mask).item() * n
            sums["clip_fraction"] += out.clip_fraction * n
            sums["ratio"] += out.ratio_mean * n
            sums["tis_weight"] += out.tis_weight_mean * n
        self.steps += 1
        grad_norm = self.engine.get_global_grad_norm()
        metrics = {k: v / max(tokens, 1.0) for k, v in sums.items()}
        metrics["loss"] = metrics["pg_loss"] + cfg.kl_coef * metrics["kl"]
        if batch.rollout_logprobs is None:
            del metrics["logprob_diff"]  # mean |learner - rollout| logprob: unknown without rollout logprobs
        metrics.update(tokens=tokens, grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                       step=self.steps, lr=cfg.lr)
        return metrics

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
        from rl_system.weight_sync import WeightSender

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

    def load_checkpoint(self, directory: str | Path) -> dict:
        path, client_state = self.engine.load_checkpoint(str(directory), tag="learner")
        if path is None:
            raise FileNotFoundError(f"{directory}: no DeepSpeed checkpoint with tag 'learner' to resume from")
        self.steps = int(client_state.get("learner_steps", 0))
        return client_state


class LearnerGroup:
    """Driver-side handle on W learner actors: starts them as one DeepSpeed group, shards batches,
    merges metrics."""

    def __init__(self, config: LearnerConfig, world_size: int = 1, role_group=None, cpus_per_rank: float = 1,
                 gpus_per_rank: float = 0):
        self.world_size = world_size
        self.config = config
        self.actors, master_addr, master_port = ranks.start_rank_actors(
            Learner, world_size, cpus_per_rank, gpus_per_rank, role_group, (config,))
        self.call("setup", master_addr, master_port)

    @classmethod
    def from_spec(cls, spec, model_path: str | Path, role_group=None) -> "LearnerGroup":
        c = spec.cluster.learner
        return cls(LearnerConfig.from_spec(spec, model_path), c.num_ranks, role_group, c.cpus_per_rank, c.gpus_per_rank)

    def _shards(self, batch: TrainBatch) -> list[TrainBatch]:
        if len(batch) < self.world_size:
            raise ValueError(f"a batch of {len(batch)} completions cannot feed {self.world_size} learner ranks")
        return [batch.select(list(range(r, len(batch), self.world_size))) for r in range(self.world_size)]

    def _num_micro(self, shards: list[TrainBatch]) -> int:
        return -(-max(len(s) for s in shards) // self.config.micro_batch_size)

    def train_step(self, batch: TrainBatch) -> dict:
        import ray

        shards = self._shards(batch)
        per_rank_tokens = batch.num_tokens() / self.world_size
        num_micro = self._num_micro(shards)
        results = ray.get([a.train_step.remote(s, per_rank_tokens, num_micro) for a, s in zip(self.actors, shards)])
        return merge_metrics(results)

    def logprobs(self, batch: TrainBatch) -> list[list[float]]:
        import ray

        shards = self._shards(batch)
        num_micro = self._num_micro(shards)
        parts = ray.get([a.logprobs.remote(s, num_micro) for a, s in zip(self.actors, shards)])
        rows: list[list[float]] = [[] for _ in range(len(batch))]
        for rank, part in enumerate(parts):
            for j, row in enumerate(part):
                rows[rank + j * self.world_size] = row
        return rows

    def rank_of(self, error: Exception) -> int | None:
        """The rank whose actor a RayActorError reports dead or unreachable; None for any other actor."""
        dead = getattr(error, "actor_id", None)
        # ActorHandle has no public id accessor; `_actor_id` is what Ray's own utilities read.
        ids = [actor._actor_id.hex() for actor in self.actors]
        return ids.index(dead) if dead in ids else None

    def call(self, method: str, *args) -> list:
        """Run a collective method on every rank; returns the per-rank results."""
        import ray

        return ray.get([getattr(a, method).remote(*args) for a in self.actors])

    def named_parameters_for_push(self) -> list[tuple[str, torch.Tensor]]:
        return self.call("named_parameters_for_push")[0]

    def init_weight_sender(self, master_addr: str, port: int, world_size: int, **kwargs):
        """Start rank 0 joining the push group; returns the Ray ref to wait on together with the
        receivers' joins (the rendezvous completes only when all have joined)."""
        return self.actors[0].init_weight_sender.remote(master_addr, port, world_size, **kwargs)

    def push_weights(self, version: int, receivers: Sequence[Any]) -> dict:
        return self.call("push_weights", version, list(receivers))[0]

    def save_hf(self, path: str | Path) -> str:
        return self.call("save_hf", str(path))[0]

    def save_checkpoint(self, directory: str | Path, client_state: dict | None = None) -> None:
        self.call("save_checkpoint", str(directory), client_state)

    def load_checkpoint(self, directory: str | Path) -> dict:
        return self.call("load_checkpoint", str(directory))[0]

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


GLOBAL_METRICS = ("tokens", "grad_norm", "step", "lr")


def merge_metrics(per_rank: list[dict]) -> dict:
    """Token-weighted means of the per-rank means; grad norm, step and lr are global already."""
    tokens = sum(m["tokens"] for m in per_rank)
    merged = {k: sum(m[k] * m["tokens"] for m in per_rank) / max(tokens, 1.0)
              for k in per_rank[0] if k not in GLOBAL_METRICS}
    merged.update(tokens=tokens, grad_norm=per_rank[0]["grad_norm"], step=per_rank[0]["step"], lr=per_rank[0]["lr"])
    return merged
