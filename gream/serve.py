"""`gream serve RUN`: recommendations over HTTP from a trained model, answered by the spec's `eval.backend`.

    POST /recommend {"history": [item id or title, ...], "k": 5, "mode": "direct|reasoning|think_ahead"}
      -> {"items": [{"id", "sid", "title", "score"}, ...], "rationale", "reasons", "mode", "latency_ms"}
    GET /health -> {"status": "ok", "model", "stage", "users_served", "batches", "queued", "modes"}

Answers come from rl_system.answer_modes, the functions `gream eval` scores, over prompts from
sft.prompts.build_prompts (with `sft.retrieved_items` when the spec has them), so a served answer
is an evaluated one. `score` is the candidate's constrained log-probability (think_ahead: of the
tokens after the offline prefix). With `eval.rerank.path` every mode's candidates are re-ranked by
that SASRec as `gream eval` ranks them: the items come in that order, `score` stays the policy's.
`reasons[i]` is the rationale's first line or sentence naming item i's SID or title, else null.
Concurrent requests are batched (gream.serve_requests.Batcher).

Errors: 400 names the field (reasoning modes on a model without `<answer>` too), 401 without the
bearer token when one is set (`--token` or GREAM_SERVE_TOKEN; checked on the headers, before the
body is read), 503 with Retry-After when the connections or the batch queue are full, 504 when the
answer takes longer than `answer_s`, 500 with no detail of the failure (the log has it). A slow or
idle client is dropped at the read deadline (gream.http_guard).

The spec comes from RUN/spec.yaml (every stage writes it) or `--spec`; `--stage export` serves a
folder written by `gream export` instead of RUN/<stage>/model.
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cluster.errors import MissingArtefact
from cluster.logs import fields
from cluster.run_layout import SPEC_FILE, RunLayout
from cluster.spec import JobSpec, load_spec
from gream.export import EXPORT_MARKER
from gream.http_guard import GuardedHandler, GuardedServer, is_loopback
from gream.serve_requests import (
    DEFAULT_LIMITS,
    MAX_BODY_BYTES,
    Batcher,
    Catalogue,
    Overloaded,
    Request,
    RequestError,
    ServeLimits,
    parse_request,
)
from indexing.dataset import Example
from indexing.sid import SidIndex
from rl_system.answer_modes import MODES, AnswerConfig, answer, check_think_ahead, rationale
from rl_system.evaluate import rerank_teacher, reranker, token_mapper
from rl_system.rollout.constraint import ANSWER_OPEN
from sft.prompts import build_prompts

log = logging.getLogger(__name__)

STAGES = ("rl", "sft", "export")
TOKEN_ENV = "GREAM_SERVE_TOKEN"  # the bearer token, where --token is not given (it would show in ps)
_SENTENCES = re.compile(r"\n+|(?<=[.!?;])\s+")


def reasons(text: str, items: list[dict]) -> list[str | None]:
    """Per item, the first line or sentence of `text` that names its SID or title (any case)."""
    parts = [p.strip() for p in _SENTENCES.split(text) if p.strip()]
    found = []
    for item in items:
        names = [n.lower() for n in (item["sid"], item["title"]) if n]
        found.append(next((p for p in parts if any(n in p.lower() for n in names)), None))
    return found


@dataclass
class Recommender:
    """A model behind an answerer (RolloutPool or TorchAnswerer: anything with their generate and beam), and the
    catalogue, prompts and answer settings it was trained and evaluated with."""

    pool: object
    tokenizer: object
    catalogue: Catalogue
    cfg: AnswerConfig
    related: np.ndarray | None
    max_history: int
    model: str
    stage: str

    @classmethod
    def build(cls, spec: JobSpec, model_dir: Path, index: SidIndex, pool, stage: str, teacher=None) -> "Recommender":
        """`teacher`: eval.rerank's (rl_system.evaluate.rerank_teacher), loaded here when the spec
        has one and it is not given."""
        from transformers import AutoTokenizer

        from sft.related import related_table

        check_think_ahead(spec.eval.think_ahead_tokens, index.depth, spec.source)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        catalogue = Catalogue.load(index, Path(spec.data.path) / f"{spec.data.name}.item.json")
        rerank = reranker(spec.eval, teacher or rerank_teacher(spec), token_mapper(tokenizer, index))
        return cls(pool, tokenizer, catalogue, AnswerConfig.build(spec.eval, spec.rl.reasoning_tokens, tokenizer, rerank),
                   related_table(spec), spec.data.max_history, str(model_dir), stage)

    def __post_init__(self) -> None:
        self.to_item = token_mapper(self.tokenizer, self.catalogue.index)

    def parse(self, body: bytes) -> Request:
        request = parse_request(body, self.catalogue, self.cfg.width, MODES, self.max_history)
        if request.mode != "direct" and self.cfg.answer_open_id is None:
            raise RequestError(f"mode: {request.mode} needs the model's {ANSWER_OPEN} token, which {self.model} "
                               "does not have (trained without reasoning); use mode direct")
        return request

    def answer_batch(self, mode: str, requests: list[Request]) -> list[dict]:
        """One reply per request, all in `mode`, from one pass of the mode over the batch."""
        users = [Example(user=-1, history=r.history, target=-1) for r in requests]
        index = self.catalogue.index
        direct = build_prompts(self.tokenizer, index, users, False, self.related).prompt_ids
        reasoning = None if mode == "direct" else build_prompts(self.tokenizer, index, users, True, self.related).prompt_ids
        replies = []
        found = answer(self.pool, self.cfg, mode, direct, reasoning, histories=[list(r.history) for r in requests])
        for request, a in zip(requests, found.answers):
            items = []
            for c in a.candidates[:request.k]:
                item = self.to_item(c.token_ids)
                items.append({"id": item, "sid": index.text(item), "title": self.catalogue.titles.get(item),
                              "score": c.logprob})
            text = None if a.thought is None else rationale(a.thought)
            replies.append({"items": items, "rationale": text,
                            "reasons": reasons(text, items) if text is not None else [None] * len(items),
                            "mode": mode})
        return replies


class RecommendServer(GuardedServer):
    """`token`: the bearer token every request must carry (None: TOKEN_ENV's, else none)."""

    def __init__(self, recommender: Recommender, host: str = "127.0.0.1", port: int = 8000,
                 limits: ServeLimits = DEFAULT_LIMITS, token: str | None = None, **batching):
        token = token or os.environ.get(TOKEN_ENV)
        if not token and not is_loopback(host):
            log.warning("serving off loopback without a token: anyone who reaches the port can use the model; "
                        f"set {TOKEN_ENV} or pass --token", extra=fields(host=host))
        super().__init__((host, port), _Handler, limits.http, token=token or None)
        self.recommender, self.answer_s = recommender, limits.answer_s
        self.batcher = Batcher(recommender.answer_batch, max_queue=limits.max_queue, **batching)

    def health(self) -> dict:
        r = self.recommender
        return {"status": "ok", "model": r.model, "stage": r.stage, "users_served": self.batcher.served,
                "batches": self.batcher.batches, "queued": self.batcher.queued, "modes": list(MODES)}

    def server_close(self) -> None:
        super().server_close()
        self.batcher.close()


class _Handler(GuardedHandler):
    server: RecommendServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path != "/health":
            return self.send_json(404, {"error": f"no such path {self.path}; GET /health or POST /recommend"})
        self.send_json(200, self.server.health())

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/recommend":
            return self.send_json(404, {"error": f"no such path {self.path}; POST /recommend or GET /health"})
        start = time.perf_counter()
        length = self.headers.get("Content-Length") or "0"
        if not (length.isascii() and length.isdigit()) or int(length) > MAX_BODY_BYTES:
            return self.send_json(400, {"error": f"Content-Length: expected a byte count up to {MAX_BODY_BYTES}, "
                                                 f"got {length}"})
        try:
            body = self.rfile.read(int(length))
        except TimeoutError:
            self.close_connection = True
            return self.send_json(408, {"error": f"the body did not arrive within {self.server.limits.read_s} s"})
        try:
            request = self.server.recommender.parse(body)
        except RequestError as exc:
            return self.send_json(400, {"error": str(exc)})
        try:
            reply = self.server.batcher.submit(request, self.server.answer_s)
        except Overloaded:
            retry = self.server.limits.retry_after_s
            return self.send_json(503, {"error": f"the server is busy; retry after {retry} s"},
                                  {"Retry-After": str(retry)})
        except TimeoutError:
            return self.send_json(504, {"error": f"no answer within {self.server.answer_s} s"})
        except Exception:  # the batcher logged it with its traceback; the client learns nothing of the code
            return self.send_json(500, {"error": "internal error answering the request; the server log has it"})
        self.send_json(200, {**reply, "latency_ms": round(1000 * (time.perf_counter() - start), 3)})

    def log_message(self, format: str, *args) -> None:  # http.server writes each request to stderr otherwise
        log.debug("http", extra=fields(client=self.client_address[0], line=format % args))


def served_model(run: Path, stage: str, spec_path: str | None, overrides: list[str]) -> tuple[JobSpec, Path, Path]:
    """The spec, model folder and SID index file to serve, each checked to be there."""
    if not run.is_dir():
        raise MissingArtefact(f"{run}: no such run directory")
    if stage == "export":
        if not (run / EXPORT_MARKER).exists():
            raise MissingArtefact(f"{run / EXPORT_MARKER}: not found; --stage export serves a folder written by gream export")
        model, found = run, sorted(run.glob("*.index.json"))
        if len(found) != 1:
            raise MissingArtefact(f"{run}: expected one NAME.index.json (the export's SID index), found {len(found)}")
        index_file = found[0]
    else:
        model = RunLayout(run).model(stage)
        if not (model / "config.json").exists():
            raise MissingArtefact(f"{model}: no trained model (config.json); run the {stage} stage or pick "
                                  f"another --stage")
    spec_file = Path(spec_path) if spec_path else run / SPEC_FILE
    if not spec_file.exists():
        raise MissingArtefact(f"{spec_file}: not found; pass --spec SPEC, the spec the run was made with")
    spec = load_spec(spec_file, overrides)
    if stage != "export":
        spec = spec.model_copy(update={"run_dir": str(run)})  # the run may have moved since
        index_file = spec.layout.index_file(spec.data.name)
        if not index_file.exists():
            raise MissingArtefact(f"{index_file}: the run's SID index is not there")
    return spec, model, index_file


def serve(run: str | Path, stage: str, host: str, port: int, spec_path: str | None = None,
          overrides: list[str] | None = None, limits: ServeLimits = DEFAULT_LIMITS, token: str | None = None) -> None:
    """Start the model's answerer (`eval.backend`) and serve until interrupted."""
    from cluster.placement import init_ray
    from rl_system.rollout.torch_answerer import answerer_from_spec

    spec, model, index_file = served_model(Path(run), stage, spec_path, overrides or [])
    index = SidIndex.load(index_file)
    teacher = rerank_teacher(spec)  # a bad eval.rerank.path is refused before any engine starts
    init_ray(spec.cluster)
    pool = answerer_from_spec(spec, model, index)
    server = None
    try:
        server = RecommendServer(Recommender.build(spec, model, index, pool, stage, teacher), host, port, limits, token)
        log.info("serving", extra=fields(url=server.url, model=str(model), stage=stage))
        print(f"serving {model} on {server.url} (POST /recommend, GET /health)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.server_close()
        pool.shutdown()
