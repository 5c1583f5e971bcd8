"""The evaluation backends: the torch answerer ranks real Office users as the vLLM rollout worker
does, under a think-ahead prefix too; direct-mode sampling stays on the trie; `auto` picks by device."""
from __future__ import annotations

import math

import pytest
import torch

from cluster.device import Placement, eval_backend
from indexing.dataset import Example, load_dataset
from rl_system.reward.functions import sid_of
from rl_system.rollout.torch_answerer import TorchAnswerer, top_p_filter
from sft.prompts import build_prompts
from tests.conftest import REPO

USERS = 48
WIDTH = 10


def test_auto_is_torch_on_a_cpu_and_vllm_on_an_accelerator():
    cpu, gpu = Placement("cpu", "gloo"), Placement("cuda", "nccl")
    assert (eval_backend("auto", cpu), eval_backend("auto", gpu)) == ("torch", "vllm")
    assert (eval_backend("vllm", cpu), eval_backend("torch", gpu)) == ("vllm", "torch")


def test_top_p_keeps_the_smallest_nucleus_by_hand():
    # probabilities 0.5, 0.3, 0.15, 0.05: top-p 0.7 keeps the first two (0.5 < 0.7, 0.8 >= 0.7)
    logits = torch.log(torch.tensor([[0.15, 0.5, 0.05, 0.3]]))
    kept = torch.isfinite(top_p_filter(logits, 0.7))
    assert kept.tolist() == [[False, True, False, True]]
    assert torch.isfinite(top_p_filter(logits, 0.4)).tolist() == [[False, True, False, False]]  # the top token stays
    assert torch.equal(top_p_filter(logits, 1.0), logits)


@pytest.fixture(scope="module")
def office_prompts(tiny_policy):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_policy.model_dir)
    ds = load_dataset(REPO / "data/office", "Office")
    users = sorted(ds.sequences)[:USERS]
    examples = [Example(u, tuple(ds.sequences[u][-11:-1]), ds.sequences[u][-1]) for u in users]
    return build_prompts(tok, tiny_policy.index, examples, reasoning=False).prompt_ids


@pytest.fixture(scope="module")
def answerer(tiny_policy):
    return TorchAnswerer(tiny_policy.model_dir, tiny_policy.index, torch.device("cpu"))


def _same_ranking(torch_beams, vllm_beams, tie: float = 1e-5) -> int:
    """The same candidates in the same order, except where vLLM's scores tie within float rounding
    (a candidate whose score is that close to a neighbour's); returns how many positions differ."""
    differ = 0
    for got, want in zip(torch_beams, vllm_beams):
        assert len(got) == len(want)
        scores = [w.logprob for w in want]
        for i, (g, w) in enumerate(zip(got, want)):
            assert g.logprob == pytest.approx(w.logprob, abs=1e-4)
            if g.token_ids != w.token_ids:
                differ += 1
                near = [abs(scores[i] - scores[j]) for j in (i - 1, i + 1) if 0 <= j < len(scores)]
                assert min(near, default=1.0) < tie, (i, g, w)
    return differ


def test_torch_backend_ranks_real_users_as_the_vllm_worker(answerer, rollout_worker, office_prompts):
    import ray

    ours = answerer.beam(office_prompts, WIDTH)
    theirs = ray.get(rollout_worker.beam.remote(office_prompts, WIDTH))
    assert _same_ranking(ours, theirs) <= len(office_prompts) // 4  # near-ties are rare
    # Under a think-ahead prefix (each user's own top SID's first token): the same again.
    heads = [[beams[0].token_ids[0]] for beams in theirs]
    ours = answerer.beam(office_prompts, WIDTH, prefixes=heads)
    theirs = ray.get(rollout_worker.beam.remote(office_prompts, WIDTH, heads))
    _same_ranking(ours, theirs)
    assert all(c.token_ids[0] == h[0] for beams, h in zip(ours, heads) for c in beams)


def test_direct_sampling_stays_on_the_trie_and_a_cold_temperature_is_the_beam(answerer, office_prompts, tiny_policy):
    index, vocab = tiny_policy.index, {i: t for t, i in answerer.tokenizer.get_vocab().items()}
    groups = answerer.generate(office_prompts[:8], n=6, temperature=0.7, max_tokens=index.depth + 1, mode="direct",
                               top_p=0.9)
    for group in groups:
        assert len(group.completions) == 6
        for c in group.completions:
            sid = sid_of(c.text, "direct")
            assert sid is not None and index.item_of(sid) is not None
            assert c.token_ids[-1] == answerer.eos_id and c.finish_reason == "stop"
            assert all(lp <= 0 and math.isfinite(lp) for lp in c.logprobs)
            assert index.item_of([vocab[t] for t in c.token_ids[:-1]]) == index.item_of(sid)
    again = answerer.generate(office_prompts[:8], n=6, temperature=0.7, max_tokens=index.depth + 1, mode="direct",
                              top_p=0.9)
    assert [[c.token_ids for c in g.completions] for g in again] == [[c.token_ids for c in g.completions] for g in groups]
    # A near-zero temperature samples the greedy path, which a width-1 beam finds.
    cold = answerer.generate(office_prompts[:8], n=2, temperature=1e-4, max_tokens=index.depth + 1, mode="direct")
    greedy = answerer.beam(office_prompts[:8], 1)
    assert [g.completions[0].token_ids[:-1] for g in cold] == [list(b[0].token_ids) for b in greedy]


def test_free_text_generation_without_an_engine_is_refused(answerer, office_prompts):
    with pytest.raises(ValueError, match="eval.backend: vllm"):
        answerer.generate(office_prompts[:1], n=1, temperature=1.0, max_tokens=8, mode="reasoning")


def test_the_spec_picks_the_torch_answerer_on_a_cpu(tiny_policy, tmp_path):
    """`gream eval` and `gream serve` build their answerer from the spec: on a CPU, `auto` is torch."""
    from cluster.spec import JobSpec
    from rl_system.rollout.torch_answerer import answerer_from_spec

    spec = JobSpec(name="x", run_dir=str(tmp_path), cluster={"device": "cpu"})
    answerer = answerer_from_spec(spec, tiny_policy.model_dir, tiny_policy.index)
    assert isinstance(answerer, TorchAnswerer) and answerer.num_workers == 1
    answerer.shutdown()  # no engine was started, so nothing to stop
