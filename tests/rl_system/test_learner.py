"""The learner on a real DeepSpeed engine in real Ray actors, with the embedded tiny Qwen3."""
import math

import numpy as np
import pytest
import torch

from cluster.spec import JobSpec
from rl_system.learner.batching import completion_logits, micro_batches, pack
from rl_system.learner.config import LearnerConfig
from rl_system.learner.group import LearnerGroup, merge_metrics
from rl_system.losses import token_logprobs
from rl_system.messages import TrainBatch

pytestmark = pytest.mark.heavy  # starts DeepSpeed, vLLM or a training run


def test_pack_aligns_completions_and_counts_positions():
    batch = TrainBatch(prompt_ids=[[5, 6, 7], [8]], completion_ids=[[1, 2], [3, 4, 9]], advantages=[1.0, -1.0],
                       rollout_logprobs=[[-0.1, -0.2], [-0.3, -0.4, -0.5]], loss_mask=[[1, 0], [1, 1, 1]])
    p = pack(batch, torch.device("cpu"), pad_id=0)
    assert p.input_ids.tolist() == [[5, 6, 7, 1, 2, 0], [0, 0, 8, 3, 4, 9]]
    assert p.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert p.position_ids[1].tolist()[2:] == [0, 1, 2, 3]
    assert p.targets.tolist() == [[1, 2, 0], [3, 4, 9]]
    assert p.mask.tolist() == [[1, 0, 0], [1, 1, 1]]
    torch.testing.assert_close(p.rollout_logp, torch.tensor([[-0.1, -0.2, 0.0], [-0.3, -0.4, -0.5]]))
    assert batch.num_tokens() == 4


def test_micro_batches_pad_with_masked_filler():
    batch = TrainBatch([[1]] * 3, [[2]] * 3, [0.0] * 3)
    parts, real = micro_batches(batch, size=2)
    assert [len(p) for p in parts] == [2, 1] and real == 2
    parts, real = micro_batches(batch, size=2, count=5)  # another rank needs 5 passes
    assert real == 3 and len(parts) == 5 and [p.num_tokens() for p in parts] == [1, 1, 1, 0, 0]


def test_train_batch_validates_rows():
    with pytest.raises(ValueError, match="advantages has 1 rows"):
        TrainBatch([[1], [1]], [[2], [2]], [0.0])
    with pytest.raises(ValueError, match=r"rollout_logprobs\[0\] has 2 entries for 1"):
        TrainBatch([[1]], [[2]], [0.0], rollout_logprobs=[[0.0, 0.0]])
    with pytest.raises(ValueError, match="must be non-empty"):
        TrainBatch([[1]], [[]], [0.0])


def test_merge_metrics_weights_by_tokens():
    keys = ("pg_loss", "kl", "entropy", "clip_fraction", "ratio", "tis_weight", "logprob_diff", "loss")
    a = {k: 1.0 for k in keys} | {"tokens": 1.0, "grad_norm": 2.0, "step": 1, "lr": 1e-3}
    b = {k: 4.0 for k in keys} | {"tokens": 3.0, "grad_norm": 2.0, "step": 1, "lr": 1e-3}
    merged = merge_metrics([a, b])
    assert merged["kl"] == pytest.approx(13 / 4) and merged["tokens"] == 4.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from sft.backbone import build_embedded

    spec = JobSpec.model_validate({"name": "learner-test", "data": {"path": "data/office", "name": "Office"},
                                   "model": {"hidden_size": 64, "num_layers": 2, "num_heads": 1, "bpe_vocab": 300}})
    return build_embedded(spec, tmp_path_factory.mktemp("tiny"))


def make_batch(vocab: int) -> TrainBatch:
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, vocab, (7,), generator=gen).tolist()
    short_prompt = prompt[2:]
    completions = [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in (4, 3, 4, 2, 4, 3)]
    # Group 1 (long prompt): completion 0 is the only good one; group 2 (short prompt): all equal-ish.
    return TrainBatch(prompt_ids=[prompt] * 4 + [short_prompt] * 2, completion_ids=completions,
                      advantages=[1.5, -0.5, -0.5, -0.5, 0.7, -0.7])


def objective(batch: TrainBatch, logprobs: list[list[float]]) -> float:
    return sum(a * sum(lp) for a, lp in zip(batch.advantages, logprobs))


def config(model_dir, **kw) -> LearnerConfig:
    return LearnerConfig(model_path=str(model_dir), device="cpu", lr=1e-3, micro_batch_size=2, kl_coef=0.1, **kw)


def test_zero2_step_raises_good_completion_and_checkpoint_round_trip(model_dir, ray_cluster, tmp_path):
    group = LearnerGroup(config(model_dir, zero_stage=2), world_size=1)
    try:
        vocab = 300
        batch = make_batch(vocab)
        before = group.logprobs(batch)
        assert [len(r) for r in before] == [4, 3, 4, 2, 4, 3]
        metrics = group.train_step(batch)
        # The policy is the reference before the first step, and the old policy is the current one.
        assert metrics["kl"] == pytest.approx(0.0, abs=1e-7)
        assert metrics["ratio"] == pytest.approx(1.0, abs=1e-6) and metrics["clip_fraction"] == 0.0
        assert metrics["tokens"] == 20 and metrics["step"] == 1
        assert math.isfinite(metrics["grad_norm"]) and metrics["grad_norm"] > 0
        assert 0 < metrics["entropy"] <= math.log(512) + 1e-4
        after = group.logprobs(batch)
        assert sum(after[0]) > sum(before[0])  # the positive-advantage completion became likelier
        assert sum(after[5]) < sum(before[5])
        assert objective(batch, after) > objective(batch, before)  # the surrogate loss went down

        group.save_checkpoint(tmp_path / "ckpt", {"weight_version": 1})
        # Rollout logprobs 0.25 below the learner's: the learner's recomputed old logprobs expose the gap.
        shifted = TrainBatch(batch.prompt_ids, batch.completion_ids, batch.advantages,
                             rollout_logprobs=[[x - 0.25 for x in row] for row in after])
        second = group.train_step(shifted)
        assert second["kl"] > 0 and second["step"] == 2
        assert second["logprob_diff"] == pytest.approx(0.25, abs=1e-5) and "logprob_diff" not in metrics
        moved = group.logprobs(batch)
        assert not np.allclose(np.concatenate(moved), np.concatenate(after))
        state = group.load_checkpoint(tmp_path / "ckpt")
        assert state["weight_version"] == 1
        np.testing.assert_allclose(np.concatenate(group.logprobs(batch)), np.concatenate(after), atol=1e-6)
    finally:
        group.shutdown()


def plain_torch_step(model_dir, batch: TrainBatch) -> list[list[float]]:
    """The same update without DeepSpeed: full-batch PPO loss, torch AdamW, global-norm clipping at 1."""
    from transformers import AutoModelForCausalLM

    from rl_system.losses import ppo_loss

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    packed = pack(batch, torch.device("cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    logp = token_logprobs(completion_logits(model, packed), packed.targets)
    # At the first step the reference is the policy itself: the k3 term and its gradient are 0.
    ppo_loss(logp, logp.detach(), packed.advantages, packed.mask).loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    with torch.no_grad():
        after = token_logprobs(completion_logits(model, packed), packed.targets)
    return [after[i, :len(c)].tolist() for i, c in enumerate(batch.completion_ids)]


def test_zero3_two_ranks_and_offload_match_plain_torch_and_export(model_dir, ray_cluster, tmp_path):
    from transformers import AutoModelForCausalLM

    batch = make_batch(300)
    expected = np.concatenate(plain_torch_step(model_dir, batch))

    group = LearnerGroup(config(model_dir, zero_stage=3), world_size=2)
    try:
        metrics = group.train_step(batch)
        assert metrics["tokens"] == 20 and metrics["kl"] == pytest.approx(0.0, abs=1e-7)
        after = group.logprobs(batch)
        # Sharded over two ZeRO-3 ranks in micro-batches of 2: the same update as one full-batch step.
        np.testing.assert_allclose(np.concatenate(after), expected, atol=2e-4)

        named = dict(group.named_parameters_for_push())
        hf = AutoModelForCausalLM.from_pretrained(model_dir)
        assert {n: tuple(t.shape) for n, t in named.items()} == {n: tuple(p.shape) for n, p in hf.named_parameters()}

        out = group.save_hf(tmp_path / "hf")
        exported = AutoModelForCausalLM.from_pretrained(out).eval()
        for name, tensor in exported.named_parameters():
            torch.testing.assert_close(tensor, named[name])
        with torch.no_grad():
            packed = pack(batch, torch.device("cpu"))
            local = token_logprobs(completion_logits(exported, packed), packed.targets)
        for i, row in enumerate(after):
            np.testing.assert_allclose(local[i, :len(row)].numpy(), row, atol=1e-5)
    finally:
        group.shutdown()

    offloaded = LearnerGroup(config(model_dir, zero_stage=3, offload=True), world_size=1)
    try:
        offloaded.train_step(batch)
        np.testing.assert_allclose(np.concatenate(offloaded.logprobs(batch)), expected, atol=2e-4)
    finally:
        offloaded.shutdown()
