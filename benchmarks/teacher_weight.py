"""Which weight should the teacher re-rank of the beam (eval.rerank.path: a SASRec) take, over several
SFT seeds? Each run's SFT model beams every validation user at `--width` (the torch beam of `gream
eval`); each weight w re-scores those beams, policy log p + w x the teacher's log p(item | history)
(rl_system.rerank), and keeps the best 10. Per user, NDCG@10 is averaged over the runs (seeds); each
weight is compared with weight 0 (the same beam in the policy's order) by a paired per-user
bootstrap, on every user and on the tail segment (indexing.segments). Chosen: the weight of highest
mean NDCG@10 on every user; test is not read (evaluate the choice with `gream eval`).

    python benchmarks/teacher_weight.py --spec configs/instruments_letter.yaml \
        --teacher runs/instr/sasrec/seed0/baselines/sasrec \
        --runs runs/instr/sft20/seed0 runs/instr/sft20/seed1 runs/instr/sft20/seed2 --width 50
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from benchmarks.beam_width import KS, torch_threads  # noqa: E402
from benchmarks.popularity_rerank import SEGMENTS, mean_ndcg, sweep  # noqa: E402
from benchmarks.results import record, spec_data  # noqa: E402


def choose(means: dict[float, float]) -> float:
    """The weight of highest mean NDCG@10 on every user; the smaller of a tie (the lighter re-rank)."""
    return max(sorted(means), key=lambda w: (means[w], -w))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=REPO / "configs/demo.yaml")
    ap.add_argument("--teacher", type=Path, required=True, help="a `gream baseline sasrec` folder (eval.rerank.path)")
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="run folders, each with sft/model and index/")
    ap.add_argument("--width", type=int, default=50, help="the beam re-scored (eval.rerank.width)")
    ap.add_argument("--weights", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 4.0])
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--name", default="teacher_weight", help="the results file (benchmarks/results/NAME.json)")
    args = ap.parse_args(argv)
    if args.width < max(KS) or not all(0 <= w < float("inf") for w in args.weights):
        raise SystemExit(f"--width must be >= {max(KS)} and --weights finite and >= 0, got {args.width} and {args.weights}")

    from cluster.errors import BadRequest
    from cluster.spec import load_spec
    from indexing.dataset import load_from_spec
    from rl_system.reward.teacher import Teacher

    ds = load_from_spec(load_spec(args.spec, args.sets))
    try:  # refused before any beam: a folder that is no SASRec scorer of the runs' catalogue
        teacher = Teacher(args.teacher, ds.num_items, ds.name)
    except BadRequest as exc:
        raise SystemExit(f"--teacher {args.teacher}: {exc}") from exc

    def scores(b) -> np.ndarray:
        return teacher.candidate_logp([list(ex.history) for ex in b.examples], b.items)

    figures, intervals = sweep(args.spec, args.runs, args.width, args.weights, args.sets, scores)
    figures["chosen"] = choose(mean_ndcg(figures, "all"))
    figures["teacher"] = str(args.teacher)
    print(f"chosen weight {figures['chosen']:g} ({figures['users']} validation users, {len(args.runs)} runs)")
    named = {f"weight {w:g} - weight 0, {seg}": i[seg] for w, i in intervals.items() for seg in SEGMENTS}
    record(args.name, figures, intervals=named,
           script=__file__, argv=argv, model=args.runs[0] / "sft/model", data=spec_data(args.spec, args.sets),
           settings={"split": "valid", "threads": torch_threads(), "teacher": str(args.teacher)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
