"""SFT throughput with one rank against N data-parallel ranks (`cluster.sft.num_ranks`, Ray actors),
the same spec and epochs, run one after the other in this process's machine; prints the train
seconds each (`sft/train_summary.json`) and the speed-up.

    python benchmarks/sft_ranks.py --ranks 2 --epochs 2 --out runs/sft_ranks

The one-rank run gets every core's threads, each of the N ranks its share, so the ratio is what
adding ranks buys on this machine, not a per-core figure.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/sft_ranks.py` puts benchmarks/, not the repo, on the path
    sys.path.insert(0, str(REPO))

from benchmarks.advantage_compare import gream, run_stage  # noqa: E402
from benchmarks.results import record, spec_data  # noqa: E402
from cluster.run_layout import RunLayout  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=REPO / "configs/demo.yaml")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "runs/sft_ranks")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="spec override for both runs")
    args = ap.parse_args(argv)

    cores = os.cpu_count() or 1
    secs = {}
    for ranks in (1, args.ranks):
        run_dir = (args.out / f"ranks{ranks}").resolve()
        sets = args.set + [f"run_dir={run_dir}", f"sft.epochs={args.epochs}", f"cluster.sft.num_ranks={ranks}",
                           f"cluster.sft.cpus_per_rank={max(cores // ranks, 1)}"]
        run_dir.mkdir(parents=True, exist_ok=True)
        if ranks != 1 and not RunLayout(run_dir).stage("index").exists():  # same index for both runs, embedded once
            shutil.copytree(RunLayout(args.out.resolve() / "ranks1").stage("index"), RunLayout(run_dir).stage("index"))
        run_stage("index", args.spec.resolve(), sets, run_dir, f"{ranks} rank(s)")
        # A new measurement each time: `gream sft` refuses a folder holding an earlier run's checkpoints.
        shutil.rmtree(RunLayout(run_dir).stage("sft"), ignore_errors=True)
        gream("sft", args.spec.resolve(), sets, run_dir / "sft.log")
        secs[ranks] = json.loads(RunLayout(run_dir).train_summary.read_text())["train_secs"]
        print(f"{ranks} rank(s): {secs[ranks]:.1f} s for {args.epochs} epochs", flush=True)
    print(f"SFT speed-up, {args.ranks} ranks / 1 rank on {cores} cores: {secs[1] / secs[args.ranks]:.2f}x")
    record("sft_ranks", {"train_s": {str(k): v for k, v in secs.items()}, "speedup": secs[1] / secs[args.ranks]},
           script=__file__, argv=argv, data=spec_data(args.spec, args.set),
           settings={"ranks": args.ranks, "epochs": args.epochs, "cores": cores, "set": args.set})
    return 0


if __name__ == "__main__":
    sys.exit(main())
