"""`gream serve` with eval.rerank: each direct answer is the plain beam of eval.rerank.width
re-scored by hand with the run's SASRec, over real HTTP on the torch backend; a bad path exits 2
naming the key before anything starts."""
from __future__ import annotations

import json
import shutil
import urllib.request

import numpy as np

from cluster.spec import dump_spec
from gream.cli import main
from indexing.dataset import Example, load_from_spec
from rl_system.reward.teacher import Teacher
from sft.prompts import build_prompts
from tests.serve_fixtures import WIDTH, histories, running, torch_recommender

BEAM, WEIGHT, USERS = 20, 1.0, 8


def recommend(server, history: list[int]) -> dict:
    body = json.dumps({"history": history, "k": WIDTH, "mode": "direct"}).encode()
    with urllib.request.urlopen(urllib.request.Request(server.url + "/recommend", data=body), timeout=60) as resp:
        return json.loads(resp.read())


def test_direct_answers_are_the_beam_reranked_by_hand(rerank_run, tiny_policy, tmp_path):
    from gream.serve import RecommendServer

    sasrec = rerank_run.layout.baselines / "sasrec"
    rec = torch_recommender(tmp_path, tiny_policy, path=str(sasrec), weight=WEIGHT, width=BEAM)
    teacher = Teacher(sasrec, load_from_spec(rerank_run).num_items, rerank_run.data.name)
    index = rec.catalogue.index
    reordered = 0
    with running(RecommendServer(rec, port=0)) as server:
        for history in histories(rec, USERS):
            reply = recommend(server, history)  # one request at a time: a batch of one, as below
            user = [Example(user=-1, history=tuple(history), target=-1)]
            beam = rec.pool.beam(build_prompts(rec.tokenizer, index, user, False).prompt_ids, BEAM)[0]
            items = np.array([rec.to_item(c.token_ids) for c in beam])
            policy = np.array([sum(c.token_logprobs) for c in beam])
            logp, _ = teacher.score([history] * len(items), items)
            order = np.argsort(-(policy + WEIGHT * logp), kind="stable")[:WIDTH]
            assert [i["id"] for i in reply["items"]] == items[order].tolist()
            assert [i["score"] for i in reply["items"]] == policy[order].tolist()  # the policy's own log p
            reordered += order.tolist() != list(range(WIDTH))
    assert reordered > 0


def test_a_bad_path_exits_2_before_serving(rerank_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(rerank_run.run_path, run)
    (run / "spec.yaml").write_text(dump_spec(rerank_run))
    assert main(["serve", str(run), "--stage", "sft", "--set", f"eval.rerank.path={tmp_path / 'nowhere'}"]) == 2
    err = capsys.readouterr().err
    assert "eval.rerank.path: " in err and "scorer.json does not exist" in err
