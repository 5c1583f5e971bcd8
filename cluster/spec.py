"""The job spec: one YAML file describes a whole gream job.

Key paths are a public contract (scripts, CLI overrides and later stages read them), so fields are
only ever added here, never renamed. Every model forbids unknown keys so a typo fails loudly.
"""
from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, PositiveFloat, ValidationError, field_validator, model_validator

from cluster.cluster_spec import ClusterSpec
from cluster.cluster_spec import Section as _Section
from cluster.errors import GreamError
from cluster.eval_spec import EvalSpec
from cluster.index_spec import IndexSpec
from cluster.lora_spec import LoraSpec
from cluster.objectives_spec import ObjectivesSpec
from cluster.record_spec import CheckpointSpec, LoggingSpec
from cluster.run_layout import RunLayout
from cluster.sft_loss_spec import DistillSpec, PrefixLossSpec
from cluster.spec_base import read_raw
from cluster.teach_spec import PreferenceSpec, ReasoningSpec, teacher_problem
from cluster.teacher_spec import SasrecStageSpec, TeacherSpec


class SpecError(GreamError):
    """A spec that cannot be used; the CLI turns it into exit code 2."""


class DataSpec(_Section):
    path: str = "data/office"
    name: str = "Office"
    split: Literal["loo", "temporal"] = "loo"
    max_history: int = Field(20, ge=1, le=1024)
    min_interactions: int = Field(3, ge=1)
    short_users: Literal["drop", "error"] = "drop"
    # Shares of each user's targets, train:valid:test; each > 0, as valid and test get one target even at 0
    temporal_ratio: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = (0.8, 0.1, 0.1)


class ModelSpec(_Section):
    backbone: str = "embedded:tiny-qwen3"  # or a Hugging Face folder
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Size of the embedded backbone; ignored for a folder backbone.
    hidden_size: int = Field(256, ge=32)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    bpe_vocab: int = Field(4000, ge=300)
    seed: int = 0  # weight init of the embedded backbone and of new token rows


class SftSpec(_Section):
    epochs: int = Field(3, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)  # AdamW, decoupled; the token warm-up phase always uses 0
    batch_size: int = Field(32, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_len: int = Field(256, ge=16)
    zero_stage: int = Field(2, ge=0, le=3)
    warmup_new_tokens_steps: int = Field(0, ge=0)
    # Supervise every history SID of a seqrec prompt, not only the answer: a next-item target at
    # every position, as SASRec trains; seqrec then needs only the covering windows of each user.
    history_loss: bool = True
    # With history_loss, extra seqrec examples per user on a random (seeded) shorter prefix: the covering windows put only one
    # target per window in the answer slot, where RL and evaluation read the prediction, against several in the history.
    answer_prefixes: int = Field(0, ge=0)
    # How a seqrec prompt writes its history: sid, each item's SID tokens; item, one token per item
    # (`<item_N>`, its row initialised from its SID codes' rows): fewer tokens, an input and output
    # row of its own for every item as SASRec has, and with history_loss a next-item softmax over the
    # items at every history position. Answers stay SIDs either way.
    history_input: Literal["sid", "item"] = "sid"
    # How a seqrec prompt is written: chat, in the backbone's chat template with template words; bare,
    # the history's tokens alone after one end-of-turn token, answered by the next SID (its end-of-turn
    # unsupervised): the answer is read where every history item's successor is trained, with no words.
    # The saved tokenizer's chat template records it (sft/prompts.py), for evaluation, RL and serving.
    prompt: Literal["chat", "bare"] = "chat"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # embedding + residual-branch dropout while training
    # Each user's latest N training targets left out of SFT and given to RL as its only prompts, so
    # that RL learns from targets the SFT model was not fitted to (0: both see every target).
    reserve_for_rl: int = Field(0, ge=0)
    # GRASP's retrieval in the prompt: the SIDs of the k items whose text is most like the last
    # history item's (the index stage stores 10 per item), in training, RL and evaluation prompts.
    retrieved_items: int = Field(0, ge=0, le=10)
    # Decay of an exponential moving average of the weights, saved instead of the last ones; 0 = off.
    # Needs the full weights on every rank: zero_stage <= 2.
    weight_average: float = Field(0.0, ge=0.0, lt=1.0)
    # Every eval_every epochs (and after the last one), validation Recall@K / NDCG@K on a fixed sample of eval_users validation
    # users (None = all), by a trie-constrained beam of width max(eval.ks); the saved model is the best epoch's by
    # NDCG@max(eval.ks) (with weight_average, the best average). 0 = off: the weights after the last epoch are saved.
    eval_every: int = Field(0, ge=0)
    eval_users: int | None = Field(500, ge=1)
    # Matmul precision over float32 weights (model.dtype float32). bfloat16 (opt-in) trains 1.2x faster
    # where the device multiplies it natively (GPUs, AMX/AVX512-BF16 CPUs), but the model varies by CPU.
    autocast: Literal["float32", "bfloat16"] = "float32"
    tasks: list[Literal["seqrec", "item2index", "index2item", "fusion_title", "fusion_sid", "preference"]] = [
        "seqrec", "item2index", "index2item", "fusion_title", "fusion_sid"]
    # ce: each token's softmax over the vocabulary; trie_ce: a SID token's over the codes the trie allows after its prefix
    loss: Literal["ce", "trie_ce"] = "ce"
    # tau of the popularity logit adjustment (sft/logit_adjust.py): SID tokens train on logits + tau log
    # prior (their codes' share of the training interactions), decoding reads them without it. 0 = off.
    logit_adjust: float = Field(0.0, ge=0)
    prefix_loss: PrefixLossSpec = PrefixLossSpec()
    distill: DistillSpec = DistillSpec()  # offline distillation from a SASRec (cluster/sft_loss_spec.py)
    curriculum: Literal["gream", "uniform", "sequential"] = "gream"
    gamma: float = Field(1.5, gt=0)
    max_train_examples: int | None = Field(None, ge=1)  # cap per alignment task, for quick runs
    seed: int = 0  # data order, template choice and curriculum draws
    lora: LoraSpec = LoraSpec()
    reasoning: ReasoningSpec = ReasoningSpec()  # the teacher, and its reasoning records (cluster/teach_spec.py)
    preference: PreferenceSpec = PreferenceSpec()  # its preference summaries, for the 'preference' task

    @model_validator(mode="after")
    def _compatible_options(self) -> "SftSpec":
        if problem := teacher_problem(self.reasoning, self.tasks):
            raise ValueError(problem)
        # Caught at load time, not minutes later when the training data is built.
        if self.answer_prefixes and not self.history_loss:
            raise ValueError("answer_prefixes adds to the covering windows of history_loss; "
                             "set history_loss: true or answer_prefixes: 0")
        if self.history_input == "item" and self.loss != "trie_ce":
            raise ValueError("history_input item normalises a history target over the items, as trie_ce normalises a SID "
                             "token over its level's codes; set loss: trie_ce or history_input: sid")
        if self.prompt == "bare" and (self.retrieved_items or self.reasoning.enabled):
            raise ValueError("prompt bare writes the history alone; set sft.retrieved_items: 0 and "
                             "sft.reasoning.enabled: false, or prompt: chat")
        if self.logit_adjust and self.loss != "trie_ce":
            raise ValueError(f"logit_adjust {self.logit_adjust} adjusts the trie-masked SID softmax; set loss: trie_ce "
                             "or logit_adjust: 0")
        if self.weight_average and self.zero_stage == 3:
            raise ValueError("weight_average needs the full weights on every rank; use zero_stage <= 2")
        return self


class RlSpec(_Section):
    steps: int = Field(30, ge=1)
    group_size: int = Field(8, ge=2)
    prompts_per_step: int = Field(16, ge=1)
    # pairwise: ReCast's top positive (+1) against the policy's hardest negative (-1), the rest 0.
    advantage: Literal["srpo", "grpo", "dr_grpo", "pairwise"] = "srpo"
    mode: Literal["direct", "reasoning"] = "direct"
    reward: Literal["residual", "binary", "beam"] = "residual"
    # MiniOneRec's ranking term at this weight (0 = off): pushes the misses the policy ranks high
    # below the target (rl_system.reward.functions.ranking_penalty).
    rank_penalty: float = Field(0.0, ge=0)
    # Weight of the cross-entropy of each trained prompt's target SID, added to the policy loss, so an
    # RL step adds to maximum likelihood instead of replacing it (DESIGN.md section 11; 0 = off).
    ce_coef: float = Field(0.0, ge=0)
    # Weight of the policy-gradient and KL terms. 0 with ce_coef > 0 is the equal-compute control:
    # the same rollouts, steps, rows and optimizer, trained by cross-entropy on the targets alone
    # ("continue SFT"), against which an RL gain counts.
    pg_coef: float = Field(1.0, ge=0)
    # A group without the target gets it in place of its last completion (MiniOneRec's add_gt), so
    # it carries a positive; the learner's own forward gives that row's old logprobs.
    inject_target: bool = False
    teacher: TeacherSpec | None = None
    objectives: ObjectivesSpec = ObjectivesSpec()  # rewards beyond accuracy (cluster/objectives_spec.py)
    # How a prompt's group is drawn: G samples, the trie-constrained beam of width G (G distinct
    # items, MiniOneRec's rollouts), or `beam_share` of the group from the beam and the rest sampled.
    rollout: Literal["sample", "beam", "mixed"] = "sample"
    beam_share: float = Field(0.5, gt=0, lt=1)
    beta: float = Field(0.5, gt=0)
    passk_k: int = Field(4, ge=1)
    beam_width: int = Field(4, ge=1)
    lr: float = Field(2e-5, gt=0)
    kl_coef: float = Field(0.001, ge=0)
    clip_low: float = Field(0.2, ge=0)
    clip_high: float = Field(0.2, ge=0)
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(16, ge=1)
    max_think_tokens: int = Field(128, ge=1)
    max_resample_rounds: int = Field(3, ge=0)
    # False trains every sampled group, the zero-variance ones too (advantage 0: only their KL term
    # acts), as TRL's GRPOTrainer does; for like-for-like throughput comparisons.
    drop_flat_groups: bool = True
    tis_cap: float | None = Field(None, gt=0)  # truncated importance sampling cap; None = off
    # Batches generated on a thread while the learner trains, from weights exactly this many versions
    # behind the learner (rl_system/rollout_ahead.py); 0 = generate, then train (synchronous).
    max_staleness: int = Field(0, ge=0)
    micro_batch_size: int = Field(32, ge=1)
    zero_stage: int = Field(2, ge=0, le=3)
    offload: bool = False
    seed: int = 0
    # Training length: `epochs` passes over the training prompts (dynamic sampling's extra rounds
    # count), capped by `steps`; None = exactly `steps` steps.
    epochs: float | None = Field(None, gt=0)
    # Only the training prompts of the first N users (by id): the few-prompt check that the loop can
    # fit what it sees. None = every user.
    train_users: int | None = Field(None, ge=1)
    # Every `eval_every` steps (and before the first), beam NDCG@10 on `eval_users` validation users
    # drawn with `eval_seed` (the same for every RL seed), or on every one ("all"); rl/model is the
    # best checkpoint. 0 = off.
    eval_every: int = Field(0, ge=0)
    eval_users: int | Literal["all"] = 500
    eval_seed: int = 0

    @property
    def completion_tokens(self) -> int:  # the thought's budget (reasoning) plus the SID's
        return self.reasoning_tokens if self.mode == "reasoning" else self.max_new_tokens

    @property
    def reasoning_tokens(self) -> int:  # max_tokens of a reasoning-mode completion
        return self.max_think_tokens + self.max_new_tokens

    @field_validator("eval_users", mode="before")
    @classmethod
    def _users(cls, users):
        if users == "all" or (isinstance(users, int) and not isinstance(users, bool) and users >= 1):
            return users
        raise ValueError(f"expected a number of users >= 1 or 'all', got {users!r}")

    @model_validator(mode="after")
    def _modes(self) -> "RlSpec":
        # Rollout-Beam expands the SID after each sampled trace's <answer>; direct mode has no trace.
        if self.reward == "beam" and self.mode != "reasoning":
            raise ValueError("reward 'beam' (Rollout-Beam) needs mode 'reasoning'")
        if self.rollout != "sample" and self.mode != "direct":
            raise ValueError(f"rollout '{self.rollout}' draws the SID by beam search, so it needs mode 'direct'")
        if self.rollout == "mixed" and not 1 <= round(self.beam_share * self.group_size) < self.group_size:
            raise ValueError(f"rollout 'mixed': beam_share {self.beam_share} of group_size {self.group_size} "
                             "must leave at least one beam and one sampled completion")
        if self.pg_coef == 0 and self.ce_coef == 0:
            raise ValueError("pg_coef 0 and ce_coef 0 leave nothing to train; set ce_coef for the continue-SFT control")
        for key, on in (("ce_coef", self.ce_coef), ("inject_target", self.inject_target)):
            if on and self.mode != "direct":
                raise ValueError(f"{key} trains the target SID right after the prompt, so it needs mode 'direct'")
        if self.max_staleness and self.tis_cap is None:
            raise ValueError(f"max_staleness {self.max_staleness} trains on completions of older weights; set "
                             "tis_cap (e.g. 2.0) so the loss corrects for them")
        return self


class JobSpec(_Section):
    name: str
    run_dir: str = "runs/${name}"
    # `teach` (between index and sft) asks the teacher for the reasoning records and preference summaries SFT reads;
    # `sasrec` (before the stages that name it) trains the run's SASRec teacher
    stages: list[Literal["index", "teach", "sasrec", "sft", "rl", "eval"]] = ["index", "sft", "rl", "eval"]
    data: DataSpec = DataSpec()
    index: IndexSpec = IndexSpec()
    model: ModelSpec = ModelSpec()
    sft: SftSpec = SftSpec()
    rl: RlSpec = RlSpec()
    eval: EvalSpec = EvalSpec()
    sasrec: SasrecStageSpec = SasrecStageSpec()
    cluster: ClusterSpec = ClusterSpec()
    logging: LoggingSpec = LoggingSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()

    # Where the spec came from; relative paths in it resolve against the working directory.
    source: str | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _default_best_metric(self) -> "JobSpec":
        if self.checkpoint.best_metric is None:
            self.checkpoint.best_metric = "val/ndcg@10" if self.rl.eval_every else "reward/mean"
        return self

    @model_validator(mode="after")
    def _teacher_paths_in_the_run(self) -> "JobSpec":
        """`${run_dir}` in a teacher path is this run's folder, so a spec naming the SASRec its own
        `sasrec` stage trains (`${run_dir}/baselines/sasrec`) follows a `--set run_dir=...`."""
        for section in (self.sft.distill, self.rl.teacher, self.eval.rerank):
            if section is not None and section.path is not None and "${run_dir}" in section.path:
                section.path = section.path.replace("${run_dir}", str(self.run_path))
        return self

    @model_validator(mode="after")
    def _bare_prompts_answer_directly(self) -> "JobSpec":
        if self.sft.prompt == "bare" and (self.rl.mode == "reasoning" or set(self.eval.modes) != {"direct"}):
            raise ValueError("sft.prompt bare has no reasoning instruction; set rl.mode: direct and eval.modes: "
                             "[direct], or sft.prompt: chat")
        return self

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir.replace("${name}", self.name))

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_path)

    def trains_teacher(self, path: str | None) -> bool:
        """Whether `path` is the SASRec this spec's own `sasrec` stage trains: a launch checks such a
        teacher when that stage has run, not before the first stage."""
        return (path is not None and "sasrec" in self.stages
                and Path(path).resolve() == self.layout.stage("sasrec").resolve())

    def section_hash(self, *sections: str) -> str:
        """Stable hash of the named sections, used to tell whether a stage's artefacts still match."""
        dumped = self.model_dump(mode="json")
        blob = json.dumps({s: dumped[s] for s in sections}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _allowed_keys(model: type[BaseModel], path: list[str]) -> tuple[type[BaseModel] | None, list[str]]:
    """Walk the model tree along `path` to list the keys allowed at its end."""
    for part in path:
        field = model.model_fields.get(part)
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None, []
        model = ann
    return model, [k for k in model.model_fields if k != "source"]


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        key = ".".join(loc) or "<root>"
        if e["type"] == "extra_forbidden":
            _, allowed = _allowed_keys(JobSpec, loc[:-1])
            close = difflib.get_close_matches(loc[-1], allowed, n=1)
            hint = f" (did you mean '{'.'.join(loc[:-1] + close)}'?)" if close else ""
            lines.append(f"{source}: unknown key '{key}'{hint}; allowed here: {', '.join(allowed)}")
        elif e["type"] == "missing":
            lines.append(f"{source}: missing required key '{key}'")
        else:
            lines.append(f"{source}: key '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def apply_overrides(raw: dict, overrides: list[str], source: str) -> dict:
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"{source}: override '{item}' must look like key.path=value")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SpecError(f"{source}: override '{key}': '{part}' is not a section")
            node = child
        try:  # YAML scalar rules so `--set rl.steps=5` gives an int and `--set x=[1,2]` a list
            node[parts[-1]] = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError as exc:
            raise SpecError(f"{source}: override '{item}': the value is not valid YAML ({getattr(exc, 'problem', exc)}); "
                            "quote it or close its brackets") from exc
    return raw


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    path = Path(path)
    raw, bases = read_raw(path, SpecError)
    source = f"{path} (on base {' -> '.join(map(str, bases))})" if bases else str(path)
    raw = apply_overrides(raw, overrides or [], source)
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(_format_errors(exc, source)) from exc
    spec.source = source
    return spec


def dump_spec(spec: JobSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
