"""`gream serve` over real HTTP (urllib) against the session's real vLLM engine (tiny policy, Office
SIDs): answers in every mode, the same as evaluation's, errors naming their field, and batching."""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from cluster.eval_spec import EvalSpec
from cluster.spec import dump_spec
from gream.cli import main
from gream.serve import Recommender, RecommendServer, reasons, served_model
from indexing.dataset import split_from_spec
from indexing.sid import SidIndex
from rl_system.answer_modes import answer
from sft.prompts import build_prompts
from tests.eval_fixtures import WorkerPool
from tests.rl_fixtures import rl_test_spec, stage_inputs

WIDTH = 5


@pytest.fixture(scope="module")
def service(rollout_worker, tiny_policy, tmp_path_factory):
    run = tmp_path_factory.mktemp("serve") / "run"
    spec = rl_test_spec(run, max_think_tokens=24)
    spec = spec.model_copy(update={"eval": EvalSpec(ks=[1, 5], beam_width=WIDTH)})
    stage_inputs(spec, tiny_policy)
    spec.layout.spec_file.write_text(dump_spec(spec))
    spec, model, index_file = served_model(run, "sft", None, [])
    recommender = Recommender.build(spec, model, SidIndex.load(index_file), WorkerPool(rollout_worker), "sft")
    server = RecommendServer(recommender, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, spec
    server.shutdown()
    server.server_close()


def call(server, path: str, payload=None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (None if payload is None else json.dumps(payload).encode())
    req = urllib.request.Request(server.url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def histories(spec, n: int) -> list[list[int]]:
    return [list(ex.history) for ex in split_from_spec(spec).valid[:n]]


def check_items(server, reply: dict, k: int) -> None:
    catalogue = server.recommender.catalogue
    items = reply["items"]
    assert len(items) == k and len({i["id"] for i in items}) == k
    for item in items:
        assert item["sid"] == catalogue.index.text(item["id"]) and item["title"] == catalogue.titles.get(item["id"])
    assert [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True)


def test_direct_answers_are_the_evaluated_ones_by_id_or_title(service):
    server, spec = service
    rec = server.recommender
    history = histories(spec, 1)[0]
    status, reply = call(server, "/recommend", {"history": history, "k": 3, "mode": "direct"})
    assert status == 200 and reply["mode"] == "direct" and reply["latency_ms"] > 0
    check_items(server, reply, 3)
    assert reply["rationale"] is None and reply["reasons"] == [None] * 3
    # The evaluation's answer for the same history: the served top 3 are its first 3.
    user = split_from_spec(spec).valid[:1]
    direct = build_prompts(rec.tokenizer, rec.catalogue.index, user, False, rec.related).prompt_ids
    evaluated = answer(rec.pool, rec.cfg, "direct", direct).answers[0].candidates
    assert [i["id"] for i in reply["items"]] == [rec.to_item(c.token_ids) for c in evaluated[:3]]
    # By title (any case), where every history item has a title of its own.
    titles = [rec.catalogue.titles.get(i, "").upper() for i in history]
    if all(t and sum(v.upper() == t for v in rec.catalogue.titles.values()) == 1 for t in titles):
        by_title = call(server, "/recommend", {"history": titles, "k": 3})[1]["items"]
        assert [i["id"] for i in by_title] == [i["id"] for i in reply["items"]]


def test_reasoning_and_think_ahead(service):
    server, spec = service
    history = histories(spec, 2)[1]
    status, reply = call(server, "/recommend", {"history": history, "k": WIDTH, "mode": "reasoning"})
    assert status == 200 and reply["mode"] == "reasoning"
    check_items(server, reply, WIDTH)
    assert isinstance(reply["rationale"], str) and len(reply["reasons"]) == WIDTH
    status, ahead = call(server, "/recommend", {"history": history, "k": 1, "mode": "think_ahead"})
    assert status == 200 and isinstance(ahead["rationale"], str) and len(ahead["items"]) == 1
    # Same greedy thought, so the same rationale; think_ahead's items start with its SID's first token.
    assert ahead["rationale"] == reply["rationale"]
    status, more = call(server, "/recommend", {"history": history, "k": WIDTH, "mode": "think_ahead"})
    first = {i["sid"].split(">")[0] for i in more["items"]}
    assert status == 200 and len(first) == 1 and more["items"][0]["id"] == ahead["items"][0]["id"]


def test_reasons_quote_the_line_naming_each_item():
    items = [{"sid": "<a_1><b_2>", "title": "Blue Stapler"}, {"sid": "<a_3><b_4>", "title": "Red Pen"},
             {"sid": "<a_5><b_6>", "title": None}]
    text = "The user buys office tools. A blue stapler fits the desk set.\nMaybe <a_3><b_4> too; nothing else"
    assert reasons(text, items) == ["A blue stapler fits the desk set.", "Maybe <a_3><b_4> too;", None]


def test_bad_requests_get_400_naming_the_field(service):
    server, spec = service
    history = histories(spec, 1)[0]
    cases = [({"history": [history[0], 99999]}, "history[1]: unknown item 99999"),
             ({"history": history, "k": 0}, f"k: expected an integer in 1..{WIDTH}"),
             ({"history": history, "k": "3"}, f"k: expected an integer in 1..{WIDTH}"),
             ({"history": history, "mode": "psychic"}, "mode: expected one of direct, reasoning, think_ahead"),
             ({"history": []}, "history: expected a non-empty list"),
             ({"history": ["no such product title"]}, "history[0]: no item has the title"),
             ({"history": history, "user": 3}, "user: unknown field")]
    for payload, message in cases:
        status, reply = call(server, "/recommend", payload)
        assert status == 400 and reply["error"].startswith(message), (payload, reply)
    status, reply = call(server, "/recommend", raw=b"{not json")
    assert status == 400 and reply["error"].startswith("body: invalid JSON")
    assert call(server, "/nowhere", {"history": history})[0] == 404
    assert call(server, "/nowhere")[0] == 404


def test_health_and_concurrent_requests_are_batched(service):
    server, spec = service
    status, before = call(server, "/health")
    assert status == 200 and before["status"] == "ok" and before["stage"] == "sft"
    assert before["model"] == str(spec.layout.model("sft"))
    engine_calls = server.recommender.pool.calls
    # 32 clients connecting at once: more than socketserver's default listen backlog of 5.
    users = histories(spec, 32)
    with ThreadPoolExecutor(32) as threads:
        replies = list(threads.map(lambda h: call(server, "/recommend", {"history": h, "k": 2}), users))
    assert all(status == 200 and len(reply["items"]) == 2 for status, reply in replies)
    after = call(server, "/health")[1]
    assert after["users_served"] - before["users_served"] == 32
    assert 1 <= after["batches"] - before["batches"] < 32
    assert server.recommender.pool.calls - engine_calls == after["batches"] - before["batches"]  # one beam each


def test_cli_names_what_is_missing(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["serve", str(run)]) == 2
    assert f"{run}: no such run directory" in capsys.readouterr().err
    (run / "sft" / "model").mkdir(parents=True)
    assert main(["serve", str(run), "--stage", "rl"]) == 2
    assert f"{run / 'rl' / 'model'}: no trained model" in capsys.readouterr().err
    (run / "sft" / "model" / "config.json").write_text("{}")
    assert main(["serve", str(run), "--stage", "sft"]) == 2
    assert f"{run / 'spec.yaml'}: not found; pass --spec SPEC" in capsys.readouterr().err
    assert main(["serve", str(run), "--stage", "export"]) == 2
    assert f"{run / 'gream_export.json'}: not found" in capsys.readouterr().err
