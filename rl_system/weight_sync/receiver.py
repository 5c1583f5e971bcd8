"""The vLLM worker's side of a weight push (a `worker_extension_cls`).

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

import time
from typing import Iterator

import torch

from rl_system.weight_sync.group import GROUP_TIMEOUT_S, broadcast_async, join_group
from rl_system.weight_sync.plan import Bucket, WeightSyncError, dtype_of, unpack


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
    from vllm.model_executor.layers.attention import (
        Attention,
        is_deferred_attention_layer,
    )
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase
    from vllm.model_executor.layers.vocab_parallel_embedding import (
        UnquantizedEmbeddingMethod,
    )
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
    from vllm.model_executor.model_loader.reload.meta import (
        materialize_layer,
        restore_layer_on_meta,
    )

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

    def init_weight_group(self, master_addr: str, port: int, rank_offset: int, world_size: int, backend: str,
                          timeout_s: float = GROUP_TIMEOUT_S) -> int:
        rank = rank_offset + self.rank
        self._weight_group = join_group(master_addr, port, rank, world_size, backend, timeout_s)
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
