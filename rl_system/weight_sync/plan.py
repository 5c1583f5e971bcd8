"""The weight-push plan: names, dtypes and shapes grouped into buckets, and the wire format of a bucket."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

# Small enough that receiving bucket i + 1 overlaps loading bucket i, large enough to amortise a call.
DEFAULT_BUCKET_BYTES = 32 << 20


class WeightSyncError(RuntimeError):
    pass


# --------------------------------------------------------------------------- plan (pure)
@dataclass(frozen=True)
class TensorMeta:
    name: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class Bucket:
    """Consecutive tensors of one dtype sent as one flat buffer."""

    dtype: str  # torch dtype name without the "torch." prefix, e.g. "float32"
    tensors: tuple[TensorMeta, ...]

    @property
    def numel(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=dtype_of(self.dtype)).element_size()

    def to_wire(self) -> dict:
        return {"dtype": self.dtype, "tensors": [[t.name, list(t.shape)] for t in self.tensors]}

    @classmethod
    def from_wire(cls, raw: dict) -> "Bucket":
        return cls(raw["dtype"], tuple(TensorMeta(name, tuple(shape)) for name, shape in raw["tensors"]))


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_of(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise WeightSyncError(f"unknown dtype '{name}' in a weight-push plan")
    return dtype


def plan_buckets(named: Sequence[tuple[str, torch.Tensor]], bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                 wire_dtype: torch.dtype | None = None) -> list[Bucket]:
    """Group tensors in order into buckets of one dtype and at most `bucket_bytes` (a tensor larger
    than that gets a bucket of its own). `wire_dtype` casts floating tensors on the wire."""
    if bucket_bytes <= 0:
        raise WeightSyncError(f"bucket_bytes must be positive, got {bucket_bytes}")
    buckets: list[Bucket] = []
    current: list[TensorMeta] = []
    current_dtype, current_bytes = None, 0
    for name, tensor in named:
        dtype = wire_dtype if wire_dtype is not None and tensor.is_floating_point() else tensor.dtype
        size = tensor.numel() * torch.empty((), dtype=dtype).element_size()
        if current and (dtype != current_dtype or current_bytes + size > bucket_bytes):
            buckets.append(Bucket(dtype_name(current_dtype), tuple(current)))
            current, current_bytes = [], 0
        current.append(TensorMeta(name, tuple(tensor.shape)))
        current_dtype, current_bytes = dtype, current_bytes + size
    if current:
        buckets.append(Bucket(dtype_name(current_dtype), tuple(current)))
    return buckets


def wire_tensors(bucket: Bucket, tensors: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """The bucket's tensors as sent: flat, in the wire dtype, on `device`; one already so is not copied."""
    dtype = dtype_of(bucket.dtype)
    return [t.detach().to(device=device, dtype=dtype).reshape(-1) for t in tensors]


def unpack(bucket: Bucket, flat: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    offset = 0
    for meta in bucket.tensors:
        yield meta.name, flat[offset: offset + meta.numel].view(meta.shape)
        offset += meta.numel
