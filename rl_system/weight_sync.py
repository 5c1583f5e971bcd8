"""Weight push: learner rank 0 -> every rollout worker's vLLM workers.

Two channels, because vLLM cannot carry tensors through `collective_rpc` (pickling a tensor's
memoryview fails) and a torch.distributed group cannot carry names:
- the plan (names, dtypes, shapes, grouped into buckets) goes through the rollout worker's Ray
  method -> `LLM.collective_rpc` -> `WeightReceiverExtension.receive_weights`;
- the bytes go bucket by bucket over a dedicated group (TCPStore + ProcessGroupGloo on CPU,
  ProcessGroupNCCL on GPUs) in which the sender is rank 0 and every vLLM worker (each TP rank of
  each rollout engine) has its own rank. Each tensor is its own broadcast, straight from the
  sender's tensor (packing a bucket first costs a copy of the model), into slices of one flat
  buffer per bucket on the receiver.

The receiver streams buckets into the model's own weight loaders (`model.load_weights`), which copy
each tensor in place into its parameter (sharding it for tensor parallelism), when loading leaves
nothing to post-process: an unquantized model with standard attention. On CPU, vLLM prepacks every
linear weight for oneDNN after loading and drops the plain weight, and a prepacked weight can only
be rebuilt by packing again (1-2x the broadcast's time, every push); so the first push gives those
layers plain weights back and points their GEMM at `torch.nn.functional.linear`, and every push
after it is a copy. The price is decode speed: in fp32 at hidden 512, F.linear's GEMMs take 1.08x
oneDNN's at 128 rows (a rollout batch) and up to 1.6x at 8 rows. Other models (quantized, MLA, ...)
go through vLLM's layerwise `model_runner.reload_weights`, which re-runs their post-load processing.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist

from cluster.logs import fields

log = logging.getLogger(__name__)

# Small enough that receiving bucket i + 1 overlaps loading bucket i, large enough to amortise a call.
DEFAULT_BUCKET_BYTES = 32 << 20
GROUP_TIMEOUT = timedelta(minutes=10)
_STORE_PREFIX = "gream-weights"


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


# --------------------------------------------------------------------------- group
def join_group(master_addr: str, port: int, rank: int, world_size: int, backend: str,
               timeout: timedelta = GROUP_TIMEOUT):
    """A process group of its own (not the default group, which DeepSpeed or vLLM already own).
    Blocks until all `world_size` ranks have joined."""
    store = dist.TCPStore(master_addr, port, world_size, is_master=rank == 0, timeout=timeout,
                          wait_for_workers=False)
    store = dist.PrefixStore(_STORE_PREFIX, store)
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world_size, timeout)
    if backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world_size, options)
    raise WeightSyncError(f"unsupported weight-sync backend '{backend}'; expected 'gloo' or 'nccl'")


def broadcast_async(group, tensor: torch.Tensor):
    """Start a broadcast from rank 0 and return its work handle (`.wait()` to finish)."""
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    return group.broadcast([tensor], opts)


# --------------------------------------------------------------------------- sender
@dataclass(frozen=True)
class PushStats:
    version: int
    seconds: float
    bytes: int
    buckets: int
    tensors: int
    load_seconds: float  # slowest receiver's time loading into its model, excluding waits for bytes
    in_place: bool  # every receiver copied into its parameters (False: some went through vLLM's reload)


class WeightSender:
    """Rank 0 of the weight group, in the learner's rank-0 process.

    `receivers` are rollout-worker handles exposing `receive_weights.remote(plan, version)` (Ray
    actors, see `RolloutWorker`) that return the receipt of `WeightReceiverExtension.receive_weights`;
    each must have joined the group (`init_weight_group`)."""

    def __init__(self, master_addr: str, port: int, world_size: int, backend: str = "gloo",
                 device: torch.device | str = "cpu", bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                 wire_dtype: torch.dtype | None = None):
        if world_size < 2:
            raise WeightSyncError(f"world_size must count the sender and at least one receiver, got {world_size}")
        self.master_addr, self.port, self.world_size = master_addr, port, world_size
        self.backend, self.device = backend, torch.device(device)
        self.bucket_bytes, self.wire_dtype = bucket_bytes, wire_dtype
        self.group = None

    def connect(self) -> None:
        """Join as rank 0; returns once every receiver has joined too."""
        self.group = join_group(self.master_addr, self.port, 0, self.world_size, self.backend)

    def push(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int, receivers: Sequence[Any]) -> PushStats:
        import ray

        if self.group is None:
            raise WeightSyncError("WeightSender.push before connect()")
        named = list(named_tensors)
        buckets = plan_buckets(named, self.bucket_bytes, self.wire_dtype)
        wire = [b.to_wire() for b in buckets]
        start = time.perf_counter()
        refs = [r.receive_weights.remote(wire, version) for r in receivers]
        offset, nbytes, in_flight = 0, 0, []
        for bucket in buckets:
            count = len(bucket.tensors)
            # Casting bucket i + 1 (when the wire dtype differs) overlaps the broadcasts of bucket i.
            tensors = wire_tensors(bucket, [t for _, t in named[offset: offset + count]], self.device)
            offset += count
            works = [broadcast_async(self.group, t) for t in tensors]
            for work in in_flight:
                work.wait()
            in_flight = works
            nbytes += bucket.nbytes
        for work in in_flight:
            work.wait()
        receipts = ray.get(refs)
        load = max(r["load_s"] for r in receipts)
        in_place = all(r["in_place"] for r in receipts)
        stats = PushStats(version, time.perf_counter() - start, nbytes, len(buckets), len(named), load, in_place)
        log.info("pushed weights", extra=fields(version=version, secs=round(stats.seconds, 3),
                                                 load_secs=round(load, 3), mib=nbytes >> 20, in_place=in_place,
                                                 buckets=len(buckets), receivers=len(receivers)))
        return stats

    def broadcast_raw(self, sizes: Sequence[int], receivers: Sequence[Any]) -> float:
        """Broadcast uint8 buffers of `sizes` bytes with no plan, packing or loading: the floor a
        push is measured against. Receivers run `receive_raw_broadcast(sizes)`."""
        import ray

        buffers = [torch.empty(n, dtype=torch.uint8, device=self.device) for n in sizes]
        start = time.perf_counter()
        refs = [r.receive_raw_broadcast.remote(list(sizes)) for r in receivers]
        for work in [broadcast_async(self.group, buf) for buf in buffers]:
            work.wait()
        ray.get(refs)
        return time.perf_counter() - start


# --------------------------------------------------------------------------- receiver
def _tied_parameters(model: torch.nn.Module) -> list[list[tuple[torch.nn.Module, str]]]:
    """Groups of (module, attribute) holding one shared Parameter, e.g. a tied lm_head and embedding."""
    groups: dict[int, list[tuple[torch.nn.Module, str]]] = {}
    for module in model.modules():
        for attr, param in module._parameters.items():
            if param is not None:
                groups.setdefault(id(param), []).append((module, attr))
    return [g for g in groups.values() if len(g) > 1]


def _retie(tied: list[list[tuple[torch.nn.Module, str]]]) -> None:
    """Reloading re-materialises parameters, which unties shared ones: the second holder (a tied
    lm_head) would keep the old tensor, and on CPU its prepacked GEMM too. Point every holder back at
    the first one's (reloaded) parameter and redo the holder's post-load processing."""
    for (owner, owner_attr), *others in tied:
        param = getattr(owner, owner_attr)
        for module, attr in others:
            setattr(module, attr, param)
            method = getattr(module, "quant_method", None)
            if method is not None:
                method.process_weights_after_loading(module)


def _loads_in_place(model: torch.nn.Module) -> bool:
    """Whether copying tensors through the model's weight loaders leaves it as a fresh load would:
    vLLM's post-load processing derives nothing from them, apart from the CPU GEMM prepacking that
    `_unpack_cpu_gemms` undoes."""
    from vllm.model_executor.layers.attention import Attention, is_deferred_attention_layer
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod
    from vllm.platforms import current_platform

    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if isinstance(method, QuantizeMethodBase) and type(method) not in (UnquantizedLinearMethod,
                                                                           UnquantizedEmbeddingMethod):
            return False
        if is_deferred_attention_layer(module) and not isinstance(module, Attention):
            return False  # e.g. MLA, which derives its absorbed projections from the loaded weights
        on_cpu_linear = current_platform.is_cpu() and isinstance(method, UnquantizedLinearMethod)
        if on_cpu_linear and not hasattr(module, "cpu_linear"):
            return False  # a non-2-D weight (causal conv, MoE experts) repacked where it lies
        if _packed_gemm(module) and _dropped(module) and _built_weight(module) is None:
            return False
    return True


def _packed_gemm(module: torch.nn.Module) -> bool:
    """vLLM-CPU runs the layer's GEMM on something other than its live weight (a prepacked copy)."""
    return hasattr(module, "cpu_linear") and module.cpu_linear is not torch.nn.functional.linear


def _dropped(module: torch.nn.Module) -> bool:
    """vLLM-CPU kept only the prepacked copy and left an empty weight in its place."""
    return module.weight.numel() == 0


def _built_weight(module: torch.nn.Module) -> torch.Tensor | None:
    """The weight as the model built it (a meta tensor carrying its weight loader), which vLLM
    records for reloading."""
    from vllm.model_executor.model_loader.reload.layerwise import get_layerwise_info

    return get_layerwise_info(module).restore_metadata[0].get("weight")


def _unpack_cpu_gemms(model: torch.nn.Module) -> set[str]:
    """Point every prepacked CPU GEMM at `torch.nn.functional.linear` on a plain weight, re-created
    (not yet loaded) where vLLM dropped it. Returns the names of the re-created weights, which the
    caller must load. A no-op once done."""
    from vllm.model_executor.model_loader.reload.layerwise import get_layerwise_info
    from vllm.model_executor.model_loader.reload.meta import materialize_layer, restore_layer_on_meta

    created = set()
    for name, module in model.named_modules():
        if not _packed_gemm(module):
            continue
        if _dropped(module):
            info = get_layerwise_info(module)
            restore_layer_on_meta(module, info)
            materialize_layer(module, info)
            created.add(f"{name}.weight")
        bias = getattr(module, "bias", None)
        if bias is not None and bias.dtype != module.weight.dtype:
            bias.data = bias.data.to(module.weight.dtype)  # the AMX kernel had it in fp32; F.linear won't mix
        module.cpu_linear = torch.nn.functional.linear
    return created


class WeightReceiverExtension:
    """Mixed into vLLM's worker class (`worker_extension_cls`); methods run in every vLLM worker
    through `LLM.collective_rpc`. `self.rank` is the worker's rank inside its engine."""

    def init_weight_group(self, master_addr: str, port: int, rank_offset: int, world_size: int, backend: str) -> int:
        rank = rank_offset + self.rank
        self._weight_group = join_group(master_addr, port, rank, world_size, backend)
        return rank

    def _post_bucket(self, bucket: Bucket) -> tuple[torch.Tensor, list]:
        """Start receiving `bucket`: its flat buffer and one broadcast per tensor."""
        flat = torch.empty(bucket.numel, dtype=dtype_of(bucket.dtype), device=self.model_runner.device)
        return flat, [broadcast_async(self._weight_group, t) for _, t in unpack(bucket, flat)]

    def receive_weights(self, wire: list[dict]) -> dict:
        """Stream the buckets into the model, in place where it allows (see the module notes).
        Returns the tensor count, whether it loaded in place, and the seconds spent waiting for
        bytes vs loading them."""
        buckets = [Bucket.from_wire(b) for b in wire]
        model = self.model_runner.get_model()
        if getattr(self, "_in_place", None) is None:
            self._in_place = _loads_in_place(model)
            self._unloaded: set[str] = set()  # re-created weights no push has filled yet
        posted: list = []  # (flat, works) of every bucket whose receive has started

        def post(i: int) -> None:
            if i < len(buckets):
                posted.append(self._post_bucket(buckets[i]))

        waited = 0.0

        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            nonlocal waited
            post(0)
            for i, bucket in enumerate(buckets):
                flat, works = posted[i]
                start = time.perf_counter()
                for work in works:
                    work.wait()
                waited += time.perf_counter() - start
                post(i + 1)  # bucket i + 1 arrives while the model loads bucket i
                yield from unpack(bucket, flat)
                posted[i] = None  # let the loaded bucket's buffer go

        start = time.perf_counter()
        try:
            if self._in_place:
                self._unloaded |= _unpack_cpu_gemms(model)
                self._unloaded -= model.load_weights(stream())
                if self._unloaded:
                    raise WeightSyncError(f"the push did not carry {len(self._unloaded)} weights the engine "
                                          f"needs, e.g. {sorted(self._unloaded)[:3]}")
            else:
                tied = _tied_parameters(model)
                self.model_runner.reload_weights(weights_iterator=stream())
                _retie(tied)
        finally:
            # Match every broadcast the sender makes even if loading stopped early, so the sender
            # fails through the caller's error instead of hanging in a collective.
            for i in range(len(posted), len(buckets)):
                post(i)
            for entry in posted:
                for work in entry[1] if entry is not None else ():
                    work.wait()
        total = time.perf_counter() - start
        return {"tensors": sum(len(b.tensors) for b in buckets), "in_place": self._in_place, "wait_s": waited,
                "load_s": total - waited}

    def receive_raw_broadcast(self, sizes: list[int]) -> int:
        device = self.model_runner.device
        for work in [broadcast_async(self._weight_group, torch.empty(n, dtype=torch.uint8, device=device))
                     for n in sizes]:
            work.wait()
        return sum(sizes)
