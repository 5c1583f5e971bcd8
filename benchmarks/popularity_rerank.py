"""Which weight should the popularity correction of the beam (eval.rerank.path: popularity) take? Each
run's SFT model beams every validation user at `--width` (the torch beam of `gream eval`); each
weight tau re-scores those beams, policy log p - tau log(1 + the item's training interactions)
(rl_system.rerank.PopularityPrior), and keeps the best 10. Per user, NDCG@10 is averaged over the
runs (seeds); each tau is compared with tau 0 (the same beam in the policy's order) by a paired
per-user bootstrap, on every user and on the tail segment (indexing.segments). Chosen: of the taus
whose every-user interval is not wholly below zero (no loss), the one of highest tail NDCG@10; test
is not read (evaluate the choice with `gream eval`).

    python benchmarks/popularity_rerank.py --spec configs/demo.yaml \
        --runs runs/sft/seed0 runs/sft/seed1 runs/sft/seed2 --width 50 --taus 0.05 0.1 0.2 0.3
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
from benchmarks.results import record, spec_data  # noqa: E402

SEGMENTS = ("all", "tail")


def choose(intervals: dict[float, dict[str, dict]], tail_means: dict[float, float]) -> float:
    """The tau of highest tail NDCG@10 among those whose every-user interval against tau 0 has its
    high end at or above zero; the smaller tau of a tie (the lighter correction). Tau 0 always holds."""
    held = [t for t, i in intervals.items() if t == 0 or i["all"]["high"] >= 0]
    return max(sorted(held), key=lambda t: (tail_means[t], -t))


def sweep(spec: Path, runs: Sequence[Path], width: int, weights: Sequence[float], sets: Sequence[str],
          scorer) -> tuple[dict, dict[float, dict[str, dict]]]:
    """Every run's beam of `width` on every validation user re-scored at each weight, policy log p +
    w x scorer(beam) ([U, W] log-probabilities of the candidates); per user, NDCG@10 averaged over
    the runs. Returns the figures (each weight's mean NDCG@10 on every user and on the tail among
    them) and each weight's paired interval against weight 0 on every user and on the tail."""
    from benchmarks.teacher_gate import beam
    from gream.paired import paired_bootstrap
    from indexing.segments import segment_masks
    from rl_system.rerank import rerank
    from sft.metrics import metrics_from_ranks, per_example_metrics

    weights = sorted(set(weights) | {0.0})
    ndcg: dict[float, list[np.ndarray]] = {w: [] for w in weights}  # weight -> per run, [U] NDCG@10
    figures: dict = {"width": width, "runs": [str(r) for r in runs], "taus": {}}
    for run in runs:
        b = beam(spec, run, "valid", width, tuple(sets))
        targets = np.array([ex.target for ex in b.examples])
        scores = scorer(b)
        for w in weights:
            ranks = rerank(b.items, b.logp, scores, targets, w)  # past 10: a miss at every k of KS
            ndcg[w].append(per_example_metrics(ranks, KS)["ndcg@10"])
            figures["taus"].setdefault(str(w), {"runs": []})["runs"].append(metrics_from_ranks(ranks, KS))
    users = np.array([ex.user for ex in b.examples])
    masks = {"all": np.ones(len(users), dtype=bool), "tail": segment_masks(b.examples, b.train)["tail"]}
    mean = {w: np.mean(v, 0) for w, v in ndcg.items()}
    intervals: dict[float, dict[str, dict]] = {}
    for w in weights:
        f = figures["taus"][str(w)]
        intervals[w] = {}
        for seg in SEGMENTS:
            m = masks[seg]
            i = paired_bootstrap(mean[w][m] - mean[0.0][m], users[m])[0]
            intervals[w][seg] = {"diff": i.diff, "low": i.low, "high": i.high}
            f[f"{seg} mean_ndcg@10"] = float(mean[w][m].mean())
        print(f"weight {w:g}: valid NDCG@10 {f['all mean_ndcg@10']:.4f}, tail {f['tail mean_ndcg@10']:.4f}; - weight 0: "
              + ", ".join(f"{seg} {intervals[w][seg]['diff']:+.4f} [{intervals[w][seg]['low']:+.4f}, "
                          f"{intervals[w][seg]['high']:+.4f}]" for seg in SEGMENTS), flush=True)
    figures["users"], figures["tail_users"] = int(len(users)), int(masks["tail"].sum())
    return figures, intervals


def mean_ndcg(figures: dict, segment: str) -> dict[float, float]:
    """Each weight's mean NDCG@10 on `segment` ("all" or "tail") from `sweep`'s figures."""
    return {float(w): f[f"{segment} mean_ndcg@10"] for w, f in figures["taus"].items()}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=REPO / "configs/demo.yaml")
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="run folders, each with sft/model and index/")
    ap.add_argument("--width", type=int, default=50, help="the beam re-scored (eval.rerank.width)")
    ap.add_argument("--taus", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3])
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--name", default="popularity_rerank", help="the results file (benchmarks/results/NAME.json)")
    args = ap.parse_args(argv)
    if args.width < max(KS) or min(args.taus) < 0:
        raise SystemExit(f"--width must be >= {max(KS)} and --taus >= 0, got {args.width} and {min(args.taus)}")

    from indexing.segments import Popularity
    from rl_system.rerank import PopularityPrior

    def prior(b) -> np.ndarray:
        return PopularityPrior(Popularity.from_train(b.train, b.dataset.num_items + 1).counts).candidate_logp(None, b.items)

    figures, intervals = sweep(args.spec, args.runs, args.width, args.taus, args.sets, prior)
    figures["chosen"] = choose(intervals, mean_ndcg(figures, "tail"))
    print(f"chosen tau {figures['chosen']:g} ({figures['users']} validation users, {len(args.runs)} runs)")
    record(args.name, figures, intervals={f"tau {t:g} - tau 0, {seg}": i[seg] for t, i in intervals.items() for seg in SEGMENTS},
           script=__file__, argv=argv, model=args.runs[0] / "sft/model", data=spec_data(args.spec, args.sets),
           settings={"split": "valid", "threads": torch_threads()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
