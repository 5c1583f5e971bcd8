"""Beauty and Instruments with LETTER's ready-made IDs: the embedded model's SFT quality beside the
published figures quoted in ../shared/data/README.md.

For each dataset (configs/<name>_letter.yaml) and each seed, `gream index`, `gream sft` and `gream eval`
run into `--out/<name>/seed<k>` (`sft.seed` = k; a stage whose `stage.json` matches is not run again,
so an interrupted run continues). The table puts the median over seeds of test Recall@5/10,
NDCG@5/10 and Pass@1/10 beside the published rows.

    python benchmarks/letter_quality.py --epochs 4 --seeds 0       # the rows of BENCHMARKS.md at 1878e6b
    python benchmarks/letter_quality.py --seeds 0 1 2              # the configs' 12 epochs, median of 3
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/letter_quality.py` puts benchmarks/, not the repo, on the path
    sys.path.insert(0, str(REPO))

from benchmarks.advantage_compare import format_table, median_column  # noqa: E402
from benchmarks.results import record  # noqa: E402
from benchmarks.sft_seeds import seed_evaluations  # noqa: E402

DATASETS = ("beauty", "instruments")
KEYS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "pass@1", "pass@10")
# Leave-one-out, full ranking (../shared/data/README.md).
PUBLISHED: dict[str, dict[str, dict[str, float]]] = {
    "beauty": {
        "TIGER": {"recall@5": 0.0454, "recall@10": 0.0648, "ndcg@5": 0.0321, "ndcg@10": 0.0384},
        "LC-Rec": {"recall@5": 0.0525, "recall@10": 0.0791, "ndcg@5": 0.0352, "ndcg@10": 0.0438},
        "SASRec": {"recall@5": 0.047, "recall@10": 0.069, "ndcg@5": 0.031, "ndcg@10": 0.038},
    },
    "instruments": {
        "GREAM": {"recall@10": 0.1207, "ndcg@10": 0.0931, "pass@1": 0.0650, "pass@10": 0.0845},
    },
}


def median_test_metrics(evaluations: Sequence[dict | None]) -> dict[str, float | None]:
    """Median over the finished runs of each test metric; None where no run has it."""
    return median_column([{key: (e or {}).get("test", {}).get(key) for key in KEYS} for e in evaluations])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="one SFT run per seed (sft.seed)")
    ap.add_argument("--epochs", type=int, help="sft.epochs (default: the config's)")
    ap.add_argument("--max-users", type=int, help="eval users per split (default: the config's eval.max_users)")
    ap.add_argument("--out", type=Path, default=REPO / "runs/letter_quality", help="where the runs go")
    ap.add_argument("--table-only", action="store_true", help="print the table from what --out holds; run nothing")
    args = ap.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        ap.error("--epochs must be >= 1")

    from cluster.spec import load_spec

    tables, figures, folders = [], {}, []
    for name in args.datasets:
        spec_path = REPO / "configs" / f"{name}_letter.yaml"
        data = (REPO / load_spec(spec_path).data.path).resolve()
        folders.append(str(data))
        if not args.table_only and not data.is_dir():
            print(f"{spec_path.name}: data.path {data} does not exist; the LETTER sets live in ../shared/data "
                  "beside the repository", file=sys.stderr)
            return 2
        common = ([f"sft.epochs={args.epochs}"] if args.epochs else []) + (
            [f"eval.max_users={args.max_users}"] if args.max_users else [])
        evaluations = list(seed_evaluations(spec_path, common, args.out / name, args.seeds, not args.table_only,
                                            f"{name} ").values())
        runs = sum(e is not None for e in evaluations)
        columns = {"gream": median_test_metrics(evaluations)} | PUBLISHED[name]
        figures[name] = {"runs": runs, "test": columns}
        tables.append(format_table({k: {m: col.get(m) for m in KEYS} for k, col in columns.items()},
                                   f"\n{name}: test metrics, gream = median of {runs} SFT run(s) "
                                   f"(embedded model, {args.epochs or 'config'} epochs); others published"))
    print("\n".join(tables))
    record("letter_quality", figures, script=__file__, argv=argv, data=os.path.commonpath(folders),
           settings={"datasets": args.datasets, "seeds": args.seeds, "epochs": args.epochs, "max_users": args.max_users})
    return 0


if __name__ == "__main__":
    sys.exit(main())
