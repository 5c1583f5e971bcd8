"""The three answer modes (rl_system/answer_modes.py) on the session's real engine and Office users:
evaluation in every mode, well-formed reasoning answers, think-ahead's shared prefix, the latency
keys, and per-mode ranks that `gream compare` reads."""
from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from cluster.eval_record import read_eval, read_ranks, write_eval
from cluster.eval_spec import EvalSpec
from cluster.spec import SpecError, dump_spec
from gream.cli import main
from indexing.dataset import split_from_spec
from rl_system.answer_modes import AnswerConfig, answer, check_think_ahead, rationale
from rl_system.evaluate import EvalConfig, evaluate, token_mapper
from rl_system.reward.functions import sid_of
from rl_system.rollout.constraint import ConstraintTable
from sft.metrics import metric_names
from sft.prompts import build_prompts
from tests.eval_fixtures import WorkerPool
from tests.rl_fixtures import rl_test_spec, stage_inputs

USERS, WIDTH, KS = 6, 5, [1, 5]
MODES = ["direct", "reasoning", "think_ahead"]


@pytest.fixture(scope="module")
def setup(rollout_worker, tiny_policy, tmp_path_factory):
    root = tmp_path_factory.mktemp("modes")
    spec = rl_test_spec(root, max_think_tokens=24)
    spec = spec.model_copy(update={"eval": EvalSpec(ks=KS, beam_width=WIDTH, max_users=USERS, pass_samples=4,
                                                    modes=MODES)})
    stage_inputs(spec, tiny_policy)
    tokenizer = AutoTokenizer.from_pretrained(spec.layout.model("sft"))
    split = split_from_spec(spec)
    return spec, tokenizer, split, WorkerPool(rollout_worker)


@pytest.fixture(scope="module")
def evaluated(setup, tiny_policy):
    spec, tokenizer, split, pool = setup
    result, ranks = evaluate(EvalConfig.from_spec(spec), pool, tokenizer, tiny_policy.index,
                             {"valid": split.valid, "test": split.test}, sampling=True, train=split.train)
    write_eval(spec.layout.stage("sft"), result, ranks)
    return result, ranks


def test_every_mode_scores_real_users_with_its_latency(evaluated, setup, tiny_policy):
    spec, tokenizer, split, pool = setup
    result, ranks = evaluated
    names = metric_names(KS)
    for split_name in ("valid", "test"):
        direct = result[split_name]
        assert set(names) | {"pass@1", "format_ok", "users", "latency_s"} <= set(direct)
        assert direct["users"] == USERS and direct["latency_s"] > 0
        reasoning = result["modes"]["reasoning"][split_name]
        assert set(names) | {"pass@1", "format_ok", "latency_s"} <= set(reasoning)
        assert reasoning["format_ok"] == 1.0  # well formed by construction, whatever the untrained policy writes
        ahead = result["modes"]["think_ahead"][split_name]
        assert ahead["latency_s"] > 0 and ahead["latency_s/offline"] > 0 and ahead["prefix_tokens"] == 1
        assert "pass@1" not in ahead
        for mode in ("reasoning", "think_ahead"):
            assert ranks.modes[mode].splits[split_name].users.tolist() == [ex.user for ex in
                                                                            getattr(split, split_name)[:USERS]]
    assert set(result["modes"]["reasoning"]["segments"]) == {"valid", "test"}
    # The direct figures are what a direct-only evaluation gives: the extra modes change nothing there.
    alone = spec.model_copy(update={"eval": EvalSpec(ks=KS, beam_width=WIDTH, max_users=USERS)})
    plain, plain_ranks = evaluate(EvalConfig.from_spec(alone), pool, tokenizer, tiny_policy.index,
                                  {"valid": split.valid}, sampling=False)
    assert {k: plain["valid"][k] for k in names} == {k: result["valid"][k] for k in names}
    assert plain_ranks.splits["valid"].ranks.tolist() == ranks.splits["valid"].ranks.tolist()
    assert "modes" not in plain and not plain_ranks.modes


def test_reasoning_and_think_ahead_answers(setup, tiny_policy):
    """Greedy thoughts are well formed and repeat; reasoning beams are WIDTH distinct real SIDs;
    think_ahead's candidates all start with the thought's first SID token, and each direct candidate
    under that prefix is among them, scored without the prefix token's log-probability."""
    spec, tokenizer, split, pool = setup
    index = tiny_policy.index
    users = split.valid[:USERS]
    direct = build_prompts(tokenizer, index, users, False).prompt_ids
    reasoning = build_prompts(tokenizer, index, users, True).prompt_ids
    cfg = AnswerConfig.build(spec.eval, spec.rl.reasoning_tokens, tokenizer)
    to_item = token_mapper(tokenizer, index)

    thought = answer(pool, cfg, "reasoning", direct, reasoning)
    assert all(sid_of(a.thought.text, "reasoning") is not None for a in thought.answers)
    assert all(isinstance(rationale(a.thought), str) and "<think>" not in rationale(a.thought) for a in thought.answers)
    for a in thought.answers:
        items = [to_item(c.token_ids) for c in a.candidates]
        assert len(items) == WIDTH and len(set(items)) == WIDTH and None not in items
    again = answer(pool, cfg, "think_ahead", direct, reasoning)
    assert [a.thought.token_ids for a in again.answers] == [a.thought.token_ids for a in thought.answers]

    plain = answer(pool, cfg, "direct", direct)
    sids = ConstraintTable.load(tiny_policy.constraint_path).sids
    for a, d in zip(again.answers, plain.answers):
        cut = a.thought.token_ids.index(cfg.answer_open_id) + 1
        assert a.prefix == tuple(a.thought.token_ids[cut:cut + 1])
        under = sum(tuple(s[:1]) == a.prefix for s in sids)  # a sparse first level may hold fewer than WIDTH
        assert len(a.candidates) == min(WIDTH, under) and all(c.token_ids[:1] == a.prefix for c in a.candidates)
        shared = {c.token_ids: c for c in a.candidates}
        for c in d.candidates:
            if c.token_ids[:1] == a.prefix:
                assert c.token_ids in shared
                assert shared[c.token_ids].logprob == pytest.approx(c.logprob - c.token_logprobs[0], abs=1e-4)


def test_compare_reads_each_modes_ranks(evaluated, setup, capsys):
    spec = setup[0]
    run = spec.run_path
    assert main(["compare", f"{run}:sft", f"{run}:sft@reasoning", f"{run}:sft@think_ahead", "--json",
                 "--resamples", "100"]) == 0
    out = json.loads(capsys.readouterr().out)
    figures = read_eval(run / "sft")
    for split, data in out["splits"].items():
        for i, mode in enumerate(MODES):
            want = figures[split] if mode == "direct" else figures["modes"][mode][split]
            assert [data["values"][m][i] for m in out["metrics"]] == pytest.approx([want[m] for m in out["metrics"]])
        assert all(row["common_users"] == USERS for row in data["comparisons"])
    assert read_ranks(run / "sft", "reasoning").depth == WIDTH
    assert main(["compare", f"{run}:sft", f"{run}:sft@sideways"]) == 2
    assert "unknown answer mode 'sideways'" in capsys.readouterr().err
    # A stage evaluated in direct mode only has no reasoning ranks to compare; rewriting it removes them.
    result = read_eval(run / "sft")
    result.pop("modes")
    write_eval(spec.layout.stage("rl"), result, read_ranks(run / "sft"))
    assert not (run / "rl" / "ranks-reasoning.json").exists()
    assert main(["compare", f"{run}:sft", f"{run}:rl@reasoning"]) == 2
    assert "ranks-reasoning.json: no per-user ranks" in capsys.readouterr().err


def test_mode_keys_are_checked(tmp_path, capsys, tiny_policy):
    path = tmp_path / "job.yaml"
    path.write_text(dump_spec(rl_test_spec(tmp_path / "run")))
    assert main(["config", "show", str(path), "--set", "eval.modes=[direct,sideways]"]) == 2
    assert "key 'eval.modes.1'" in capsys.readouterr().err
    assert main(["config", "show", str(path), "--set", "eval.modes=[reasoning]"]) == 2
    assert "key 'eval.modes'" in capsys.readouterr().err
    depth = tiny_policy.index.depth
    check_think_ahead(depth - 1, depth)
    with pytest.raises(SpecError, match=f"key 'eval.think_ahead_tokens': {depth} must be below the SID depth"):
        check_think_ahead(depth, depth)
    # `gream eval` refuses it once the index is loaded, before any engine starts.
    stage_inputs(rl_test_spec(tmp_path / "run"), tiny_policy)
    assert main(["eval", str(path), "--set", "eval.modes=[direct,think_ahead]",
                 "--set", f"eval.think_ahead_tokens={depth}"]) == 2
    assert "key 'eval.think_ahead_tokens'" in capsys.readouterr().err


def test_in_run_validation_scores_the_mode_rl_trains(setup, tiny_policy):
    """RL in reasoning mode selects its checkpoint on the reasoning answers (thought, then the beam
    after <answer>), not on the direct beam: the figures equal the evaluation's reasoning mode."""
    from rl_system.validation import InRunValidation, K

    spec, tokenizer, split, pool = setup
    users = list(split.valid)[:USERS]
    wide = spec.eval.model_copy(update={"beam_width": K})
    for mode in ("direct", "reasoning"):
        check = InRunValidation(pool, tokenizer, tiny_policy.index, users, K, None, mode, spec.rl.reasoning_tokens)
        got = check()
        acfg = AnswerConfig.build(wide, spec.rl.reasoning_tokens, tokenizer)
        direct = build_prompts(tokenizer, tiny_policy.index, users, False, None)
        reasoning = build_prompts(tokenizer, tiny_policy.index, users, True, None)
        answers = answer(pool, acfg, mode, direct.prompt_ids, reasoning.prompt_ids).answers
        to_item = token_mapper(tokenizer, tiny_policy.index)
        hits = [t in [to_item(c.token_ids) for c in a.candidates] for a, t in zip(answers, direct.targets)]
        # Greedy thoughts repeat, so the check and this direct call see the same answers.
        assert got[f"val/recall@{K}"] == pytest.approx(sum(hits) / len(users))
        assert all((a.thought is not None) == (mode == "reasoning") for a in answers)


def test_pass_at_k_on_a_seeded_sample_of_users(setup, tiny_policy):
    from rl_system.evaluate import sample_users

    spec, tokenizer, split, pool = setup
    users = list(split.valid)[:USERS]
    picked = sample_users(users, 2, seed=0)
    assert picked == sample_users(users, 2, seed=0) and len(picked) == 2
    assert [users.index(u) for u in picked] == sorted(users.index(u) for u in picked)  # split order
    assert sample_users(users, 99, seed=0) == users
    cfg = EvalConfig(spec.eval.model_copy(update={"modes": ["direct"], "pass_users": 2}), "direct",
                     spec.rl.max_new_tokens, spec.rl.reasoning_tokens)
    result, _ = evaluate(cfg, pool, tokenizer, tiny_policy.index, {"valid": users}, sampling=True)
    assert result["valid"]["users"] == USERS and result["valid"]["pass_users"] == 2
    assert 0 <= result["valid"]["pass@1"] <= 1
