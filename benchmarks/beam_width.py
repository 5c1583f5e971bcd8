"""Which beam width should `gream eval` rank with? The top 10 of a wider beam can hold items whose
first codes a narrower beam pruned. For each width, every run's SFT model beams every validation
user (the torch beam of `gream eval`); per user, NDCG@10 is averaged over the runs (seeds), and each
width is compared with the spec's `eval.beam_width` by a paired per-user bootstrap. The chosen width
is the one of highest mean; test is not read (evaluate the chosen width with `gream eval`).

    python benchmarks/beam_width.py --spec configs/instruments_letter.yaml \
        --runs runs/instr/sft/seed0 runs/instr/sft/seed1 runs/instr/sft/seed2 --widths 10 20 50
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from benchmarks.results import record, spec_data  # noqa: E402

KS = (1, 5, 10)


def choose(means: dict[int, float]) -> int:
    """The width of highest mean NDCG@10; the narrower of a tie (the cheaper beam)."""
    return max(sorted(means), key=lambda w: (means[w], -w))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=REPO / "configs/demo.yaml")
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="run folders, each with sft/model and index/")
    ap.add_argument("--widths", type=int, nargs="+", default=[10, 20, 50])
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--name", default="beam_width", help="the results file (benchmarks/results/NAME.json)")
    args = ap.parse_args(argv)

    from benchmarks.teacher_gate import beam
    from cluster.spec import load_spec
    from gream.paired import paired_bootstrap
    from sft.metrics import metrics_from_ranks, per_example_metrics, ranks_in_rows

    base_width = load_spec(args.spec, args.sets).eval.beam_width
    widths = sorted(set(args.widths) | {base_width})
    if min(widths) < max(KS):
        raise SystemExit(f"--widths: each must be >= {max(KS)} (NDCG@10 reads a top 10), got {min(widths)}")
    per_user: dict[int, np.ndarray] = {}  # width -> [U] NDCG@10 averaged over the runs
    figures: dict = {"base_width": base_width, "runs": [str(r) for r in args.runs], "widths": {}}
    users = None
    for width in widths:
        runs, seconds = [], []
        for run in args.runs:
            start = time.perf_counter()
            b = beam(args.spec, run, "valid", width, tuple(args.sets))
            seconds.append(time.perf_counter() - start)
            ranks = ranks_in_rows(b.items, np.array([ex.target for ex in b.examples]))
            users = np.array([ex.user for ex in b.examples])
            runs.append(metrics_from_ranks(ranks, KS) | {"ndcg": per_example_metrics(ranks, KS)["ndcg@10"]})
        per_user[width] = np.mean([r.pop("ndcg") for r in runs], 0)
        figures["widths"][str(width)] = {"runs": runs, "median_ndcg@10": float(np.median([r["ndcg@10"] for r in runs])),
                                         "mean_ndcg@10": float(per_user[width].mean()), "beam_seconds": seconds}
        print(f"width {width}: valid NDCG@10 per run " + ", ".join(f"{r['ndcg@10']:.4f}" for r in runs)
              + f"; beam {np.median(seconds):.0f} s a run", flush=True)
    intervals = {}
    for width in widths:
        i = paired_bootstrap(per_user[width] - per_user[base_width], users)[0]
        intervals[f"width {width} - width {base_width}"] = {"diff": i.diff, "low": i.low, "high": i.high}
        print(f"width {width}: mean {per_user[width].mean():.4f}, - width {base_width}: "
              f"{i.diff:+.4f} [{i.low:+.4f}, {i.high:+.4f}]")
    figures["chosen"] = choose({w: float(per_user[w].mean()) for w in widths})
    figures["users"] = int(len(users))
    print(f"chosen width {figures['chosen']} ({len(users)} validation users, {len(args.runs)} runs)")
    record(args.name, figures, intervals=intervals, script=__file__, argv=argv, model=args.runs[0] / "sft/model",
           data=spec_data(args.spec, args.sets), settings={"split": "valid", "threads": torch_threads()})
    return 0


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
