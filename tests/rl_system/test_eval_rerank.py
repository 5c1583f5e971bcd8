"""`gream eval` with eval.rerank (generate, then re-rank) on real Office users, torch backend: its
ranks and top lists are those of the plain beam of eval.rerank.width re-scored by hand with the
run's SASRec, and so are the reasoning and think-ahead beams; eval.json and `gream compare` say it
was re-ranked; a path that is not a scorer of this catalogue exits 2 naming the key."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from cluster.eval_record import write_eval
from cluster.rerank_spec import POPULARITY
from cluster.spec import dump_spec
from gream.cli import main
from indexing.dataset import load_from_spec, split_from_spec
from indexing.segments import training_items
from indexing.sid import SidIndex
from rl_system.answer_modes import AnswerConfig, Thoughts, answer
from rl_system.evaluate import evaluate_model, reranker, token_mapper
from rl_system.messages import Completion
from rl_system.rerank import rerank
from rl_system.reward.teacher import Teacher
from rl_system.rollout.constraint import ANSWER_OPEN, THINK_CLOSE, THINK_OPEN
from rl_system.rollout.torch_answerer import TorchAnswerer
from sft.prompts import build_prompts
from sft.sasrec import SASRec, SasrecConfig
from sft.sasrec_scorer import save_scorer

WIDTH, WEIGHT = 30, 0.5


def rerank_spec(spec, path, weight: float = WEIGHT):
    rerank = {"path": str(path), "weight": weight, "width": WIDTH}
    return spec.model_copy(update={"eval": spec.eval.model_copy(update={"rerank": spec.eval.rerank.model_copy(update=rerank)})})


@pytest.fixture(scope="module")
def evaluated(rerank_run):
    spec = rerank_spec(rerank_run, rerank_run.layout.baselines / "sasrec")
    index = SidIndex.load(spec.layout.index_file(spec.data.name))
    result, ranks = evaluate_model(spec, spec.layout.model("sft"), index, split_from_spec(spec), sampling=False)
    return spec, index, result, ranks


def plain_beam(spec, index, examples) -> tuple[np.ndarray, np.ndarray]:
    """The plain beam of WIDTH: items and policy log p."""
    model = spec.layout.model("sft")
    answerer = TorchAnswerer(model, index, torch.device("cpu"))
    vocab = {i: t for t, i in answerer.tokenizer.get_vocab().items()}
    prompts = build_prompts(answerer.tokenizer, index, examples, False).prompt_ids
    items = np.full((len(examples), WIDTH), -1)
    policy = np.zeros((len(examples), WIDTH))
    for row, beam in enumerate(answerer.beam(prompts, WIDTH)):
        items[row, :len(beam)] = [index.item_of([vocab[t] for t in c.token_ids]) for c in beam]
        policy[row, :len(beam)] = [sum(c.token_logprobs) for c in beam]
    return items, policy


def by_hand(spec, index, examples) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The plain beam of WIDTH (items, policy log p) and the SASRec's log p of each candidate."""
    items, policy = plain_beam(spec, index, examples)
    teacher = Teacher(spec.eval.rerank.path, load_from_spec(spec).num_items, spec.data.name)
    logp, _ = teacher.score([list(ex.history) for ex in examples for _ in range(WIDTH)], items.ravel())
    return items, policy, logp.reshape(items.shape)


def test_eval_ranks_are_the_plain_beam_reranked_by_hand(evaluated):
    spec, index, result, ranks = evaluated
    depth, k = spec.eval.beam_width, max(spec.eval.ks)
    split = split_from_spec(spec)
    changed = 0
    for name, examples in (("valid", split.valid[:64]), ("test", split.test[:64])):
        items, policy, teacher = by_hand(spec, index, examples)
        targets = np.array([ex.target for ex in examples])
        mixed = rerank(items, policy, teacher, targets, WEIGHT)
        want = np.where(mixed < depth, mixed, -1)
        got = ranks.splits[name]
        assert got.users.tolist() == [ex.user for ex in examples]
        assert got.ranks.tolist() == want.tolist()
        # The lists too: each user's best k by policy + weight x teacher, ties in the beam's order.
        score = np.where(items >= 0, policy + WEIGHT * teacher, -np.inf)
        top = np.take_along_axis(items, np.argsort(-score, axis=1, kind="stable")[:, :k], 1)
        assert got.top.tolist() == top.tolist()
        changed += int((top != items[:, :k]).any(1).sum())
        assert result[name]["users"] == len(examples)
    assert changed > 0  # the teacher did re-order this beam
    assert result["meta"]["rerank"] == {"path": spec.eval.rerank.path, "weight": WEIGHT, "width": WIDTH}


def test_popularity_rerank_is_the_plain_beam_less_weight_x_log_training_count(rerank_run, capsys):
    spec = rerank_spec(rerank_run, POPULARITY)
    index = SidIndex.load(spec.layout.index_file(spec.data.name))
    split = split_from_spec(spec)
    result, ranks = evaluate_model(spec, spec.layout.model("sft"), index, split, sampling=False)
    # by hand: each item's training interactions, a user's first history included (indexing.segments)
    bought = Counter(item for seq in training_items(split.train).values() for item in seq)
    k, changed = max(spec.eval.ks), 0
    for name, examples in (("valid", split.valid[:64]), ("test", split.test[:64])):
        items, policy = plain_beam(spec, index, examples)
        prior = -np.log1p(np.array([[bought[i] for i in row] for row in items], dtype=float))
        score = np.where(items >= 0, policy + WEIGHT * prior, -np.inf)
        top = np.take_along_axis(items, np.argsort(-score, axis=1, kind="stable")[:, :k], 1)
        assert ranks.splits[name].top.tolist() == top.tolist()
        changed += int((top != items[:, :k]).any(1).sum())
    assert changed > 0  # the prior did re-order this beam
    assert result["meta"]["rerank"] == {"path": POPULARITY, "weight": WEIGHT, "width": WIDTH}
    write_eval(spec.layout.stage("sft"), result, ranks)
    assert main(["compare", f"{spec.run_path}:baselines/sasrec", f"{spec.run_path}:sft"]) == 0
    assert (f"{spec.run_path}:sft: generated, then re-ranked by the inverse-popularity prior (weight {WEIGHT}, "
            f"beam of {WIDTH})") in capsys.readouterr().out


def test_reasoning_and_think_ahead_beams_are_reranked_too(evaluated):
    """Given each user's thought (here written by hand: the SID of the user's last item opens its
    answer), both modes' beams of WIDTH come back re-ordered as by hand, the best beam_width kept."""
    spec, index, _, _ = evaluated
    examples = split_from_spec(spec).valid[:8]
    answerer = TorchAnswerer(spec.layout.model("sft"), index, torch.device("cpu"))
    tok = answerer.tokenizer
    ids = tok.get_vocab()
    thoughts = Thoughts([Completion([ids[THINK_OPEN], ids[THINK_CLOSE], ids[ANSWER_OPEN]]
                                    + [ids[t] for t in index.tokens(ex.history[-1])], "", [], "stop")
                         for ex in examples], 0.0)
    direct, reasoning = (build_prompts(tok, index, examples, r).prompt_ids for r in (False, True))
    teacher = Teacher(spec.eval.rerank.path, load_from_spec(spec).num_items, spec.data.name)
    to_item, histories = token_mapper(tok, index), [list(ex.history) for ex in examples]
    reranked = AnswerConfig.build(spec.eval, spec.rl.reasoning_tokens, tok, reranker(spec.eval, teacher, to_item))
    plain = replace(reranked, width=WIDTH, rerank=None)
    for mode in ("reasoning", "think_ahead"):
        got = answer(answerer, reranked, mode, direct, reasoning, thoughts, histories).answers
        beams = answer(answerer, plain, mode, direct, reasoning, thoughts).answers
        assert all(len(b.candidates) > spec.eval.beam_width for b in beams)
        reordered = 0
        for a, b, history in zip(got, beams, histories):
            items = np.array([to_item(c.token_ids) for c in b.candidates])
            logp, _ = teacher.score([history] * len(items), items)
            score = np.array([sum(c.token_logprobs) for c in b.candidates]) + WEIGHT * logp
            order = np.argsort(-score, kind="stable")[:spec.eval.beam_width]
            assert [c.token_ids for c in a.candidates] == [b.candidates[j].token_ids for j in order], mode
            assert a.thought is b.thought and a.prefix == b.prefix
            reordered += order.tolist() != list(range(len(order)))
        assert reordered > 0, mode


def test_compare_names_the_reranked_stage(evaluated, capsys):
    spec, _, result, ranks = evaluated
    write_eval(spec.layout.stage("sft"), result, ranks)
    run = spec.run_path
    assert main(["compare", f"{run}:baselines/sasrec", f"{run}:sft"]) == 0
    out = capsys.readouterr().out
    assert (f"{run}:sft: generated, then re-ranked by the SASRec {spec.eval.rerank.path} "
            f"(weight {WEIGHT}, beam of {WIDTH})") in out
    assert "re-ranked" not in out.replace(f"{run}:sft: generated, then re-ranked", "")  # the baseline was not


def test_a_path_that_is_not_a_scorer_of_this_catalogue_exits_2_naming_the_key(rerank_run, tmp_path, capsys):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(dump_spec(rerank_run))
    foreign = tmp_path / "toy-sasrec"
    cfg = SasrecConfig(hidden=8, blocks=1, heads=1, dropout=0.0)
    save_scorer(foreign, SASRec(4, 3, cfg), cfg, "Toy", 4)
    broken = tmp_path / "no-weights"  # this catalogue's scorer.json, no model.safetensors beside it
    broken.mkdir()
    meta = json.loads((foreign / "scorer.json").read_text())
    meta.update(dataset="Office", num_items=load_from_spec(rerank_run).num_items)
    (broken / "scorer.json").write_text(json.dumps(meta))
    for path, why in ((tmp_path / "nowhere", "scorer.json does not exist"), (foreign, "was trained on Toy with 4 items"),
                      (broken, "not a SASRec scorer that loads")):
        assert main(["eval", str(spec_file), "--set", f"eval.rerank.path={path}"]) == 2
        err = capsys.readouterr().err
        assert "eval.rerank.path: " in err and why in err, err
    assert main(["eval", str(spec_file), "--set", f"eval.rerank.path={foreign}", "--set", "eval.rerank.width=5"]) == 2
    assert "rerank.width (5) must be >= beam_width (10)" in capsys.readouterr().err


def test_a_vllm_engine_serves_the_wider_beam(rerank_run):
    """vLLM's beam asks for `width` logprobs a step: the engine must allow the generated width."""
    from rl_system.rollout.engine import EngineConfig

    spec = rerank_spec(rerank_run, rerank_run.layout.baselines / "sasrec").model_copy(deep=True)
    spec.eval.rerank.width = 64
    assert EngineConfig.from_spec(spec, "model", "trie.json").max_logprobs == 64
    spec.eval.rerank.path = None  # off: the width is not generated
    assert EngineConfig.from_spec(spec, "model", "trie.json").max_logprobs == 20
