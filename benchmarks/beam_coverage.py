"""Where a tail gap comes from: how many targets does each model hold anywhere in its ranked list (an
SFT model's beam of `eval.beam_width`, a SASRec's first as many items)? A target outside the list is
out of reach of any re-ranking; one inside it is a question of order.

Recall@D, D the depth both models' ranks.json hold, on every user of `--splits` (validation by
default), per model the mean over its seeds, overall and per long-tail segment (indexing.segments);
the difference left - right pooled over seeds by a paired per-user bootstrap (benchmarks/quality.py).

    python benchmarks/beam_coverage.py --spec configs/instruments_letter.yaml --names SFT SASRec \\
        --left runs/instr/sft20/seed0:sft runs/instr/sft20/seed1:sft runs/instr/sft20/seed2:sft \\
        --right runs/instr/sasrec/seed0:baselines/sasrec runs/instr/sasrec/seed1:baselines/sasrec \\
        runs/instr/sasrec/seed2:baselines/sasrec
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
from benchmarks.quality import on_splits, per_user, pooled, pooled_segments  # noqa: E402
from benchmarks.results import record, spec_data  # noqa: E402
from gream.compare import in_segment, labels, load_stage  # noqa: E402
from gream.paired import RESAMPLES, SEED  # noqa: E402
from indexing.segments import SEGMENTS  # noqa: E402


def mean_recall(stages: Sequence, split: str, depth: int) -> float:
    """The seeds' mean Recall@depth."""
    return float(np.mean([per_user(s, split, (depth,))[f"recall@{depth}"].mean() for s in stages]))


def coverage(left: Sequence, right: Sequence, names: Sequence[str], splits: Sequence[str]) -> tuple[dict, dict]:
    """Each model's Recall@D per split and segment, and left - right's pooled intervals."""
    depth = min(s.ranks.depth for s in (*left, *right))
    metric = f"recall@{depth}"
    segments = [seg for seg in SEGMENTS if all(labels(s, seg) for s in (*left, *right))]
    figures: dict = {"names": list(names), "depth": depth, "seeds": [len(left), len(right)], "recall": {}}
    for name, stages in zip(names, (left, right)):
        figures["recall"][name] = {
            split: {"all": mean_recall(stages, split, depth),
                    **{seg: mean_recall([in_segment(s, seg) for s in stages], split, depth) for seg in segments}}
            for split in splits}
    intervals = {"all": {split: pooled(left, right, split, RESAMPLES, SEED, (metric,)) for split in splits},
                 **pooled_segments(left, right, RESAMPLES, SEED, splits, (metric,))}
    return figures, intervals


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=REPO / "configs/demo.yaml", help="the runs' spec (its data)")
    ap.add_argument("--names", nargs=2, default=["SFT", "SASRec"])
    ap.add_argument("--left", nargs="+", required=True, metavar="RUN_DIR:STAGE")
    ap.add_argument("--right", nargs="+", required=True, metavar="RUN_DIR:STAGE")
    ap.add_argument("--splits", nargs="+", choices=("valid", "test"), default=["valid"])
    ap.add_argument("--name", default="beam_coverage", help="the results file (benchmarks/results/NAME.json)")
    args = ap.parse_args(argv)

    left = [on_splits(load_stage(s), args.splits) for s in args.left]
    right = [on_splits(load_stage(s), args.splits) for s in args.right]
    figures, intervals = coverage(left, right, args.names, args.splits)
    metric = f"recall@{figures['depth']}"
    for split in args.splits:
        for seg, by_split in intervals.items():
            iv = by_split[split]["metrics"][metric]
            print(f"{split} {seg}: {metric} " + ", ".join(f"{n} {figures['recall'][n][split][seg]:.4f}" for n in args.names)
                  + f"; {args.names[0]} - {args.names[1]} {iv['diff']:+.4f} [{iv['low']:+.4f}, {iv['high']:+.4f}]")
    record(args.name, figures, intervals=intervals, script=__file__, argv=argv, data=spec_data(args.spec),
           settings={"left": args.left, "right": args.right})
    return 0


if __name__ == "__main__":
    sys.exit(main())
