"""One spec's SFT quality over several seeds: `gream index`, `gream sft`, `gream eval` per seed into
`--out/seed<k>` (`sft.seed` = k: data order, templates; a stage whose `stage.json` matches the spec is
not run again), then the median and the per-seed values of every valid/test metric.

    python benchmarks/sft_seeds.py --seeds 0 1 2 --out runs/sft_seeds/collab \\
        --set index.collaborative.weight=0.5
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/sft_seeds.py` puts benchmarks/, not the repo, on the path
    sys.path.insert(0, str(REPO))

from benchmarks.advantage_compare import (  # noqa: E402
    format_table,
    median_column,
    read_json,
    run_stage,
)
from benchmarks.results import record, spec_data  # noqa: E402
from cluster.run_layout import RunLayout  # noqa: E402

KEYS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "pass@1", "pass@10")


def metric_column(evaluation: dict | None) -> dict[str, float | None]:
    """`eval.json` -> "split metric" -> value, valid rows first."""
    return {f"{split} {key}": (evaluation or {}).get(split, {}).get(key) for split in ("valid", "test") for key in KEYS}


def seed_stages(spec_path: Path, sets: list[str]) -> list[str]:
    """The stages one seed runs: index, the spec's sasrec stage if it lists one, sft, eval."""
    from cluster.spec import load_spec

    listed = load_spec(spec_path, sets).stages
    return [s for s in ("index", "sasrec", "sft", "eval") if s != "sasrec" or s in listed]


def seed_evaluations(spec_path: Path, sets: list[str], out: Path, seeds: Sequence[int], run: bool,
                     label: str = "") -> dict[int, dict | None]:
    """Per seed k: with `run`, `gream index`, the spec's `sasrec` stage when it lists one (the teacher
    `sft.distill` may name), `sft`, `eval` of `spec_path` into `out/seed<k>` with `sft.seed=k`
    (finished stages skipped); then that run's SFT `eval.json` (None while missing)."""
    stages = seed_stages(spec_path, sets)
    evaluations = {}
    for seed in seeds:
        run_dir = (out / f"seed{seed}").resolve()
        seed_sets = sets + [f"run_dir={run_dir}", f"sft.seed={seed}"]
        if run:
            run_dir.mkdir(parents=True, exist_ok=True)
            for stage in stages:
                run_stage(stage, spec_path.resolve(), seed_sets, run_dir, f"{label}seed {seed}")
        evaluations[seed] = read_json(RunLayout(run_dir).eval_file("sft"))
    return evaluations


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=REPO / "configs/demo.yaml")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", type=Path, required=True, help="where the runs go (one seed<k> folder each)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="spec override for every run")
    ap.add_argument("--table-only", action="store_true", help="print the table from what --out holds; run nothing")
    ap.add_argument("--name", default="sft_seeds", help="the results file (benchmarks/results/NAME.json)")
    args = ap.parse_args(argv)

    evaluations = seed_evaluations(args.spec, args.set, args.out, args.seeds, not args.table_only)
    columns = {f"seed {seed}": metric_column(e) for seed, e in evaluations.items()}
    table = {"median": median_column(list(columns.values())), **columns}
    print(format_table(table, f"\n{args.spec.name} {' '.join(args.set)}: SFT eval per seed and median; runs in {args.out}"))
    record(args.name, table, script=__file__, argv=argv, data=spec_data(args.spec, args.set),
           settings={"seeds": args.seeds, "set": args.set, "out": str(args.out)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
