"""`gream sft SPEC`: SID alignment (+ optional reasoning curriculum) fine-tuning on DeepSpeed.

Steps: resolve the backbone, add the SID and reasoning tokens, render and tokenise the alignment
tasks, optionally warm up only the new token rows with the base frozen (OneRec-Think), then train
(ZeRO-2 by default, full or LoRA) in the curriculum's batch order, and save a merged Hugging Face
folder to `<run_dir>/sft/model/` that vLLM loads as is (with `sft.weight_average`, the moving average
of the weights instead of the last ones). With `sft.eval_every`, the weights (or the average) are
validated every few epochs on a fixed sample of validation users (sft/validation.py) and the best
epoch's are saved; `train_summary.json` names it under `selection`. Every epoch ends with a checkpoint
(sft/epoch_checkpoints.py) that `gream sft --resume` goes on from.

The LM head runs only at positions that carry a target in some row of the batch (the answers, which
left padding lines up at the end, plus the history SIDs of seqrec examples when `sft.history_loss`
is on): on a small backbone the head over a ~5k vocabulary costs as much as the layers.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Iterator, Sequence

import torch
from tqdm import tqdm

from cluster.checkpoint import CheckpointManager
from cluster.device import autocast_dtype, dropout, resolve
from cluster.logs import fields
from cluster.metrics_log import MetricsLog
from cluster.run_layout import MODEL_DIR
from cluster.spec import JobSpec
from indexing.dataset import load_from_spec, reserve_latest, split_from_spec
from indexing.segments import Popularity
from indexing.sid import SidIndex, read_vocab
from indexing.trie import SidTrie
from sft.backbone import REASONING_TOKENS, add_item_tokens, add_sid_tokens, resolve_backbone
from sft.batches import collate, make_batches, token_loss
from sft.curriculum import ALIGN, REASON, Step, epoch_plan
from sft.distill import Distiller
from sft.engine_setup import SftError, apply_lora, deepspeed_config, freeze_all_but_rows, init_distributed
from sft.epoch_checkpoints import EpochCheckpoints, open_checkpoints
from sft.hf_folder import load_backbone, save_backbone, torch_dtype
from sft.logit_adjust import log_mass
from sft.metrics import selection_metric
from sft.prompts import use_bare_prompts
from sft.related import related_table
from sft.selection import BestWeights
from sft.sid_losses import sft_objective
from sft.tasks import AlignmentBuilder, ReasoningRecord, build_alignment, tokenize
from sft.validation import Validator, validation_sample
from sft.weight_average import WeightAverage

log = logging.getLogger(__name__)

LOG_EVERY = 20  # optimizer steps between log lines
DESCRIPTION_TITLES = 3


def add_dropout(model, p: float) -> None:
    """Dropout on the input embeddings and on each layer's attention and MLP outputs (before they join
    the residual stream), active in training mode only. Qwen and Llama configs carry no hidden dropout;
    a small backbone trained for many epochs on one catalogue overfits without it, as SASRec would."""
    if p <= 0:
        return

    def drop(module, _inputs, output):
        if isinstance(output, tuple):
            return (dropout(output[0], p, module.training), *output[1:])
        return dropout(output, p, module.training)

    model.get_input_embeddings().register_forward_hook(drop)
    for layer in model.get_decoder().layers:
        layer.self_attn.register_forward_hook(drop)
        layer.mlp.register_forward_hook(drop)


def code_descriptions(index: SidIndex, items: dict[int, dict], vocab: Sequence[str]) -> dict[str, str]:
    """A SID code token is described by titles of items that carry it, so its new embedding row
    starts near what those items are about (meaningful for a pretrained backbone)."""
    titles: dict[str, list[str]] = {}
    for item in index.items():
        title = items.get(item, {}).get("title")
        if not isinstance(title, str):
            continue
        for token in index.tokens(item):
            bucket = titles.setdefault(token, [])
            if len(bucket) < DESCRIPTION_TITLES:
                bucket.append(title)
    out = {t: "; ".join(titles[t]) for t in vocab if t in titles}
    out.update({t: t.strip("</>") for t in REASONING_TOKENS})
    return out


def load_index(spec: JobSpec) -> tuple[SidIndex, list[str]]:
    from indexing.build import index_path, vocab_path

    path = index_path(spec)
    if not path.exists():
        raise SftError(f"{path}: no SID index; run the index stage first (gream index SPEC)")
    index = SidIndex.load(path)
    vocab = read_vocab(vocab_path(spec)) if vocab_path(spec).exists() else index.vocab()
    missing = {t for item in index.items() for t in index.tokens(item)} - set(vocab)
    if missing:
        raise SftError(f"{vocab_path(spec)}: SID tokens {sorted(missing)[:5]} used by {path.name} are not in the vocabulary")
    return index, vocab


class Trainer:
    def __init__(self, spec: JobSpec, reasoning: Sequence[ReasoningRecord] = (), preferences: dict[int, str] | None = None,
                 checkpoints: CheckpointManager | None = None):
        """`checkpoints`: rank 0's, opened by the stage (fresh or --resume); without it rank 0 opens a fresh run."""
        self.spec, self.checkpoints = spec, checkpoints
        self.placement = resolve(spec.cluster.device)
        self.rank, self.world = init_distributed(self.placement, spec.cluster.sft.collective_timeout_s)
        self.device = self.placement.torch_device(int(os.environ.get("LOCAL_RANK", 0)))
        # Weights stored in bf16/fp16 (model.dtype) train in that precision already.
        self.amp_dtype = autocast_dtype(spec.sft.autocast) if spec.model.dtype == "float32" else torch.float32
        self.out_dir = spec.layout.stage("sft")
        self.average: WeightAverage | None = None  # only the main phase's weights are averaged
        self._prepare(reasoning, preferences)

    def _prepare(self, reasoning, preferences) -> None:
        spec = self.spec
        ds = load_from_spec(spec)
        split = split_from_spec(spec, ds)
        index, vocab = load_index(spec)
        model, tok = load_backbone(resolve_backbone(spec), "float32")
        if spec.sft.prompt == "bare":
            use_bare_prompts(tok)  # saved with the model: every later prompt is written as it trained
        known = len(tok)
        self.token_ids = add_sid_tokens(model, tok, vocab, code_descriptions(index, ds.items, vocab), spec.model.seed)
        item_ids = add_item_tokens(model, tok, index, spec.model.seed) if spec.sft.history_input == "item" else {}
        self.new_rows = sorted(i for i in (*self.token_ids.values(), *item_ids.values()) if i >= known)
        related = related_table(spec)
        builder = AlignmentBuilder(tok, index, ds.items, spec.sft.seed, related)
        train, _ = reserve_latest(split.train, spec.sft.reserve_for_rl)
        rendered = build_alignment(builder, spec.sft.tasks, train, preferences, spec.sft.max_train_examples,
                                   spec.sft.history_loss, spec.sft.answer_prefixes, spec.sft.seed)
        history_ids = frozenset(item_ids.values()) if item_ids else frozenset(self.token_ids[t] for t in vocab)
        self.align = tokenize(tok, rendered, spec.sft.max_len, history_ids if spec.sft.history_loss else frozenset())
        self.reason = tokenize(tok, builder.reasoning(reasoning), spec.sft.max_len)
        if not self.align:
            raise SftError("no alignment examples: check sft.tasks, sft.max_len and the dataset")
        add_dropout(model, spec.sft.dropout)
        self.model, self.tok = model, tok
        trie = SidTrie.from_index(index, tok.get_vocab(), model.config.vocab_size, [tok.eos_token_id], self.device)
        self.distiller = (Distiller(spec, ds.num_items, index, self.token_ids, trie, self.device, item_ids)
                          if spec.sft.distill.path is not None else None)
        self.objective = sft_objective(spec.sft, trie, None if self.distiller is None else self.distiller.tables,
                                       self._log_mass(trie, index, split.train, ds.num_items),
                                       slice(min(item_ids.values()), max(item_ids.values()) + 1) if item_ids else None)
        self.validator = (Validator(tok, index, validation_sample(split.valid, spec.sft.eval_users), spec.eval.ks,
                                    model.config.vocab_size, related) if spec.sft.eval_every else None)
        log.info("sft data", extra=fields(align=len(self.align), reason=len(self.reason), new_tokens=len(self.new_rows),
                                          vocab=len(tok)))

    def _log_mass(self, trie: SidTrie, index: SidIndex, train, num_items: int) -> torch.Tensor | None:
        """The trie's log add-one training interactions per node, when sft.logit_adjust asks for them."""
        if not self.spec.sft.logit_adjust:
            return None
        items = index.items()
        sids = torch.tensor([[self.token_ids[t] for t in index.tokens(i)] for i in items])
        counts = Popularity.from_train(train, num_items).counts
        return log_mass(trie, sids, torch.as_tensor(counts[items]))

    def _engine(self, model, params, total_steps: int, lr: float, weight_decay: float, zero_stage: int):
        import deepspeed

        cfg = deepspeed_config(self.spec.sft, self.spec.model.dtype, self.placement, total_steps, lr, weight_decay, zero_stage)
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=cfg)
        return engine

    def _epoch_batches(self, epoch: int) -> tuple[list[Step], dict[str, list]]:
        s = self.spec.sft
        rng = random.Random(f"batches:{s.seed}:{epoch}")
        batches = {ALIGN: make_batches(self.align, s.batch_size, rng), REASON: make_batches(self.reason, s.batch_size, rng)}
        plan = epoch_plan(s.curriculum, epoch, s.epochs, len(batches[ALIGN]), len(batches[REASON]), s.gamma, s.seed)
        # Every rank takes its share of the plan; all ranks run the same number of micro-steps.
        plan = plan[: len(plan) - len(plan) % self.world][self.rank::self.world]
        return plan, batches

    def _train_steps(self, engine, steps: Iterator[tuple[str, list]], total: int, desc: str, metrics: MetricsLog | None,
                     step0: int) -> int:
        engine.train()
        pad = self.tok.pad_token_id
        seen_tokens, supervised, t0 = 0, 0, time.perf_counter()
        running = {ALIGN: [], REASON: []}
        step = step0
        bar = tqdm(total=total, desc=desc, disable=self.rank != 0)
        for kind, examples in steps:
            batch = collate(examples, pad)
            teacher = None if self.distiller is None else self.distiller.targets(examples, batch.targets)
            loss = token_loss(engine, batch, self.device, self.amp_dtype, self.objective, teacher)
            engine.backward(loss)
            stepped = engine.is_gradient_accumulation_boundary()  # asked before step() counts this micro-step
            engine.step()
            if self.average is not None and stepped:
                self.average.update()
            running[kind].append(loss.item())
            seen_tokens += int(batch.attention_mask.sum())
            supervised += batch.supervised_tokens
            bar.update(1)
            step += 1
            if step % (LOG_EVERY * self.spec.sft.grad_accum) == 0 or step == step0 + total:
                secs = time.perf_counter() - t0
                record = {"phase": desc, "tokens_per_s": round(seen_tokens / secs, 1),
                          "supervised_tokens_per_s": round(supervised / secs, 1), "lr": engine.get_lr()[0]}
                for k, losses in running.items():
                    if losses:
                        record[f"loss_{k}"] = round(sum(losses) / len(losses), 4)
                bar.set_postfix(loss=record.get("loss_align", record.get("loss_reason")), tok_s=record["tokens_per_s"])
                if metrics is not None:
                    metrics.write(step, record)
                running = {ALIGN: [], REASON: []}
        bar.close()
        self.tokens_per_s = seen_tokens / max(time.perf_counter() - t0, 1e-9)
        return step

    def warmup_new_tokens(self, metrics: MetricsLog | None) -> int:
        """OneRec-Think token warm-up: train only the new rows on alignment batches, base frozen."""
        n = self.spec.sft.warmup_new_tokens_steps
        if n == 0:
            return 0
        handles = freeze_all_but_rows(self.model, self.new_rows)
        params = [p for p in self.model.parameters() if p.requires_grad]
        # No weight decay: decoupled decay would shrink the frozen rows even with zero gradients.
        engine = self._engine(self.model, params, math.ceil(n / self.spec.sft.grad_accum), self.spec.sft.lr, 0.0,
                              min(self.spec.sft.zero_stage, 2))
        rng = random.Random(f"warmup:{self.spec.sft.seed}")
        batches = make_batches(self.align, self.spec.sft.batch_size, rng)
        steps = ((ALIGN, batches[i % len(batches)]) for i in range(n))
        done = self._train_steps(engine, steps, n, "warmup", metrics, 0)
        for h in handles:
            h.remove()
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.model = engine.module
        return done

    def _metrics(self, resume_from_step: int) -> MetricsLog | None:
        # Rank 0 writes the metrics (its numbers stand for the group, as in the RL learner).
        return (MetricsLog(self.out_dir, tensorboard=self.spec.logging.tensorboard, resume_from_step=resume_from_step,
                           wandb_project=self.spec.logging.wandb_project) if self.rank == 0 else None)

    def train(self, deadline: float | None = None) -> Path:
        """`deadline` (time.perf_counter(), one process only): no epoch starts after it; the last one run
        is validated, as the last planned epoch is (sft/sft_tune.py's trials)."""
        s = self.spec.sft
        t_start = time.perf_counter()
        # Dropout and LoRA's initial weights draw from torch's RNG: seeded, a run repeats (and a resumed one
        # puts the state its checkpoint saved back).
        torch.manual_seed(random.Random(f"torch:{s.seed}:{self.rank}").getrandbits(63))
        saver = EpochCheckpoints(self.spec, (self.checkpoints or open_checkpoints(self.spec, False, False))
                                 if self.rank == 0 else None, self.rank, self.device)
        resuming = saver.resuming()
        metrics = None if resuming else self._metrics(0)
        step = 0 if resuming else self.warmup_new_tokens(metrics)  # a checkpoint holds the warmed-up weights
        model = apply_lora(self.model, s.lora, self.new_rows) if s.lora.enabled else self.model
        plans = [self._epoch_batches(e) for e in range(s.epochs)]
        total = sum(len(plan) for plan, _ in plans)
        engine = self._engine(model, [p for p in model.parameters() if p.requires_grad],
                              math.ceil(total / s.grad_accum), s.lr, s.weight_decay, s.zero_stage)
        state = saver.load(engine) if resuming else None
        trainable = [p for p in engine.module.parameters() if p.requires_grad]
        if s.weight_average:
            self.average = WeightAverage(trainable, s.weight_average)
        best = (BestWeights(trainable, self.rank, self.device, lambda modifier: self._gathered(trainable, modifier))
                if self.validator is not None else None)
        done, secs_before, out_of_time = 0, 0.0, False
        if state is not None:
            done, step, secs_before, self.tokens_per_s = state["epochs"], state["step"], state["train_secs"], \
                state["tokens_per_s"]
            # DeepSpeed restores its optimizer steps, not the micro-steps that place the accumulation boundary.
            engine.micro_steps = state["engine_micro_steps"]
            for kept, name in ((self.average, "average"), (best, "best")):
                if kept is not None and state[name] is not None:  # a spec without it wrote the checkpoint (--force)
                    kept.load_state_dict(state[name])
            metrics = self._metrics(step)
        for epoch in range(done, s.epochs):
            plan, batches = plans[epoch]
            steps = ((st.kind, batches[st.kind][st.batch]) for st in plan)
            step = self._train_steps(engine, steps, len(plan), f"epoch {epoch}", metrics, step)
            done = epoch + 1
            out_of_time = deadline is not None and time.perf_counter() >= deadline and done < s.epochs
            if best is not None and (done % s.eval_every == 0 or done == s.epochs or out_of_time):
                self.validate(engine, best, epoch, step, metrics)
            saver.save(engine, {
                "epochs": epoch + 1, "step": step, "engine_micro_steps": engine.micro_steps,
                "train_secs": secs_before + time.perf_counter() - t_start, "tokens_per_s": self.tokens_per_s,
                "average": self.average.state_dict() if self.average is not None else None,
                "best": best.state_dict() if best is not None else None})
            if out_of_time:
                break
        train_secs = secs_before + time.perf_counter() - t_start  # validation and checkpoints included
        if best is not None:
            best.restore()
        elif self.average is not None:
            self.average.copy_to()
        path = self.save(engine)
        summary = {"train_secs": round(train_secs, 1), "ranks": self.world,
                   "tokens_per_s": round(self.tokens_per_s, 1),  # rank 0 alone
                   "autocast": str(self.amp_dtype).removeprefix("torch."),
                   "epochs": done, "out_of_time": out_of_time, "micro_steps": step,
                   "align_examples": len(self.align), "reason_examples": len(self.reason),
                   # what the curriculum fed this rank: its share of every epoch's planned batches, by kind
                   "batches": dict(Counter(st.kind for plan, _ in plans for st in plan)),
                   "task_examples": dict(Counter(e.task for e in (*self.align, *self.reason))), "model": str(path)}
        if best is not None:  # which epoch's weights sft/model holds, and why
            summary["selection"] = {"epoch": best.epoch, "metric": selection_metric(self.validator.ks),
                                    "valid": best.metrics, "valid_users": self.validator.users,
                                    "eval_every": s.eval_every}
        if self.rank == 0:
            self.spec.layout.train_summary.write_text(json.dumps(summary, indent=2))
        if metrics is not None:
            metrics.close()
        log.info("sft done", extra=fields(**summary))
        return path

    def validate(self, engine, best: BestWeights, epoch: int, step: int, metrics: MetricsLog | None) -> None:
        """Score the weights that would be saved (the average, with sft.weight_average) on the
        validation sample, and keep them if they are the best so far. Every rank runs it."""
        t0 = time.perf_counter()
        with self.average.swapped_in() if self.average is not None else contextlib.nullcontext():
            scores = self.validator.score(engine.module, self.device, self.amp_dtype)
            best.offer(epoch, scores[selection_metric(self.validator.ks)], scores)
        record = {"phase": f"valid epoch {epoch}", "epoch": epoch, **{f"valid_{k}": v for k, v in scores.items()},
                  "valid_users": self.validator.users, "valid_secs": round(time.perf_counter() - t0, 1),
                  "best_epoch": best.epoch}
        if metrics is not None:
            metrics.write(step, record)
        log.info("sft validation", extra=fields(**record))

    def _gathered(self, params: list, modifier_rank: int | None):
        """The full parameters inside the block under ZeRO-3, where they are partitioned (a collective:
        every rank enters); nothing to do at lower stages."""
        if self.spec.sft.zero_stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)

    def save(self, engine) -> Path:
        """Rank 0 writes the full model (LoRA merged) in the spec's dtype; under ZeRO-3 the
        partitioned parameters are gathered first."""
        path = self.out_dir / MODEL_DIR
        module = engine.module
        with self._gathered(list(module.parameters()), None):
            if self.rank == 0:
                if self.spec.sft.lora.enabled:
                    module = module.merge_and_unload()
                save_backbone(module.to(torch_dtype(self.spec.model.dtype)), self.tok, path)
        return path
