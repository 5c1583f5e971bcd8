"""The quality table: SFT seeds against SASRec seeds (or any two sets of evaluated stages), Recall/NDCG@5/10
on every user of valid and test, with paired 95% intervals of their difference.

    python benchmarks/quality.py --sft runs/quality/seed0 runs/quality/seed1 runs/quality/seed2 \\
        --sasrec runs/quality/sasrec0 runs/quality/sasrec1 runs/quality/sasrec2
    python benchmarks/quality.py --run --seeds 0 1 2 --out runs/quality    # run them first (hours on 2 cores)
    python benchmarks/quality.py --names FlexCode k-means --left runs/quality_flexcode/seed0:sft ... \
        --right runs/quality/seed0:sft ...                                  # any two models

Reads finished runs: each SFT run's `sft/` (or `--stage rl`) and each SASRec run's
`baselines/sasrec/`, eval.json and ranks.json (cluster.eval_record), so every figure is recomputed
from the per-user ranks and equals the evaluation's own. Printed:
- per run and the median over seeds, each metric on each split, with the users each run covers
  against the split's size (`--spec`'s data): the table is meant for every user (eval.max_users null);
- per seed pair, SFT run i against SASRec run i (in the order given): the difference on the users
  both hold and its paired bootstrap interval (gream/paired.py: users resampled, 2000, seed 0);
- pooled: per user, each model's metric averaged over its seeds (on the users every run holds), and
  the bootstrap interval of the difference of those averages. Its point estimate is the difference
  of the seed-averaged figures; the interval covers the sampling of users with the seed noise
  averaged out, not the spread between seeds, which the per-seed rows show;
- the pooled difference per long-tail segment (head / tail items, short / long users:
  indexing.segments), where every run's ranks carry the labels.
The header gives the date, the machine (cores, os.getloadavg()) and the wall times the runs
recorded (SFT train_summary.json, SASRec meta.train_secs, eval stage.json).

`--run` first runs, per seed k, `gream index`, `sft` (sft.seed=k) and `eval` into `--out/seed<k>` and
`gream baseline sasrec --seed k` into `--out/sasrec<k>`, all with eval.max_users=null; finished stages
are not run again. `--sasrec-tune`: the first seed runs `--tune` (budget: that seed's SFT training
time), the others train its chosen settings (`--config .../tune.json`).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/quality.py` puts benchmarks/, not the repo, on the path
    sys.path.insert(0, str(REPO))

from benchmarks.advantage_compare import format_table, gream, median_column, read_json  # noqa: E402
from benchmarks.results import record, spec_data  # noqa: E402
from cluster.run_layout import RANKS_FILE, RunLayout  # noqa: E402
from gream.compare import Stage, compare, in_segment, labels, load_stage  # noqa: E402
from gream.paired import RESAMPLES, SEED, align, paired_bootstrap  # noqa: E402
from indexing.segments import SEGMENTS  # noqa: E402

SPLITS = ("valid", "test")
KS = (5, 10)
METRICS = tuple(f"{m}@{k}" for m in ("recall", "ndcg") for k in KS)


def on_splits(stage: Stage, splits: Sequence[str]) -> Stage:
    """The stage with only `splits`' ranks, so that no comparison computes a split left out."""
    return replace(stage, ranks=replace(stage.ranks, splits={name: stage.ranks.splits[name] for name in splits}))


def per_user(stage: Stage, split: str, ks: Sequence[int] = KS) -> dict:
    """Each user's Recall/NDCG at `ks` and beyond-accuracy values (those the ranks hold)."""
    from sft.metrics import per_example_metrics

    s = stage.ranks.splits[split]
    return {**per_example_metrics(s.ranks, ks), **s.lists}


def cutoffs(metrics: Sequence[str]) -> list[int]:
    """The K of each "name@K" metric."""
    return sorted({int(m.split("@")[1]) for m in metrics if "@" in m})


def column(stage: Stage, splits: Sequence[str] = SPLITS) -> dict[str, float]:
    """"split metric" -> the run's figure, from its ranks."""
    return {f"{split} {m}": float(per_user(stage, split)[m].mean()) for split in splits for m in METRICS}


def pooled(left: Sequence[Stage], right: Sequence[Stage], split: str, resamples: int, seed: int,
           metrics: Sequence[str] = METRICS) -> dict:
    """left - right on per-user means over each model's seeds, users every run holds."""
    stages = [*left, *right]
    rows = align(*(s.ranks.splits[split].users for s in stages))
    values = [per_user(s, split, cutoffs(metrics) or KS) for s in stages]
    mean = {m: [sum(values[i][m][rows[i]] for i in part) / len(part)
                for part in (range(len(left)), range(len(left), len(stages)))] for m in metrics}
    out = {"users": len(rows[0]), "metrics": {}}
    if len(rows[0]):
        diff = np.stack([mean[m][0] - mean[m][1] for m in metrics], axis=1)
        users = stages[0].ranks.splits[split].users[rows[0]]
        for m, iv in zip(metrics, paired_bootstrap(diff, users, resamples, seed)):
            out["metrics"][m] = {"diff": iv.diff, "low": iv.low, "high": iv.high, "verdict": iv.verdict}
    return out


def pooled_segments(left: Sequence[Stage], right: Sequence[Stage], resamples: int, seed: int,
                    splits: Sequence[str] = SPLITS, metrics: Sequence[str] = METRICS) -> dict:
    """`pooled` within each long-tail segment that every run labels."""
    out = {}
    for segment in SEGMENTS:
        if all(labels(s, segment) for s in (*left, *right)):
            parts = [in_segment(s, segment) for s in (*left, *right)]
            out[segment] = {split: pooled(parts[:len(left)], parts[len(left):], split, resamples, seed, metrics)
                            for split in splits}
    return out


def wall_times(stage_spec: str) -> dict[str, float]:
    """Seconds a RUN_DIR:STAGE recorded, where it did: a baseline's training (eval.json meta), or
    the run's SFT training and its eval stage."""
    run_dir, stage = stage_spec.rsplit(":", 1)
    layout = RunLayout(Path(run_dir))
    if stage.startswith("baselines/"):
        meta = (read_json(layout.eval_file(stage)) or {}).get("meta", {})
        found = {f"{stage.removeprefix('baselines/')} train": meta.get("train_secs")}
    else:
        found = {"sft train": (read_json(layout.train_summary) or {}).get("train_secs"),
                 "eval": (read_json(layout.stage_marker("eval")) or {}).get("seconds")}
    return {k: v for k, v in found.items() if v is not None}


def split_sizes(spec_path: Path, sets: list[str]) -> dict[str, int]:
    from cluster.spec import load_spec
    from indexing.dataset import split_from_spec

    split = split_from_spec(load_spec(spec_path, sets))
    return {name: len(getattr(split, name)) for name in SPLITS}


def report(left_specs: Sequence[str], right_specs: Sequence[str], names: Sequence[str], sizes: dict[str, int],
           resamples: int = RESAMPLES, seed: int = SEED, splits: Sequence[str] = SPLITS) -> dict:
    """Seeds of `names[0]` (RUN_DIR:STAGE each) against seeds of `names[1]`: left - right, on `splits`
    (valid alone to choose a setting without reading test)."""
    left = [on_splits(load_stage(s), splits) for s in left_specs]
    right = [on_splits(load_stage(s), splits) for s in right_specs]
    lname, rname = names
    runs = {f"{lname.lower()} {i}": s for i, s in enumerate(left)} | {f"{rname.lower()} {i}": s for i, s in enumerate(right)}
    columns = {name: column(s, splits) for name, s in runs.items()}
    pairs = []
    for i, (a, b) in enumerate(zip(left, right)):
        result = compare([b, a], resamples, seed)  # B - A = left - right
        pairs.append({"pair": i, "splits": {split: result["splits"][split]["comparisons"][0] for split in splits}})
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cores": os.cpu_count(), "load": [round(x, 2) for x in os.getloadavg()],
        "folders": {name: str(s.folder) for name, s in runs.items()},
        "users": {name: {split: len(s.ranks.splits[split].users) for split in splits} for name, s in runs.items()},
        "split_sizes": sizes,
        "wall_secs": dict(zip(runs, map(wall_times, [*left_specs, *right_specs]))),
        "names": [lname, rname],
        "columns": columns,
        "medians": {f"{lname} med": median_column([columns[f"{lname.lower()} {i}"] for i in range(len(left))]),
                    f"{rname} med": median_column([columns[f"{rname.lower()} {i}"] for i in range(len(right))])},
        "pairs": pairs,
        "pooled": {split: pooled(left, right, split, resamples, seed) for split in splits},
        "segments": pooled_segments(left, right, resamples, seed, splits),
        "resamples": resamples, "seed": seed,
    }


def format_report(r: dict) -> str:
    lines = [f"quality table, {r['date']}; {r['cores']} cores, load average {' / '.join(map(str, r['load']))} "
             f"(1 / 5 / 15 min)"]
    for name, folder in r["folders"].items():
        sizes = r["split_sizes"]
        covered = ", ".join(f"{split} {n}/{sizes[split]}" + ("" if n == sizes[split] else " (NOT every user)")
                            for split, n in r["users"][name].items())
        walls = ", ".join(f"{k} {v:.0f} s" for k, v in r["wall_secs"].get(name, {}).items()) or "wall time unknown"
        lines.append(f"  {name}: {folder}; users {covered}; {walls}")
    lines.append(format_table({**r["medians"], **r["columns"]}, "\nper run and median over seeds"))
    level = "95%"
    lname, rname = r["names"]
    lines.append(f"\n{lname} - {rname}, paired bootstrap ({r['resamples']} resamples of users, seed {r['seed']}), "
                 f"{level} intervals")
    blocks = [(f"pair {p['pair']} ({lname.lower()} {p['pair']} - {rname.lower()} {p['pair']})", p["splits"]) for p in r["pairs"]]
    blocks.append(("pooled (per-user mean over seeds)", r["pooled"]))
    blocks += [(f"pooled, {segment} segment", splits) for segment, splits in r["segments"].items()]
    for title, splits in blocks:
        for split in splits:
            data = splits[split]
            users = data.get("common_users", data.get("users"))
            lines.append(f"  {title}, {split}, {users} users:")
            for m in METRICS:
                iv = data["metrics"].get(m)
                lines.append(f"    {m:<10}" + (f"{iv['diff']:+.4f}  [{iv['low']:+.4f}, {iv['high']:+.4f}]  {iv['verdict']}"
                                               if iv else "no common users"))
    return "\n".join(lines)


def run_all(spec: Path, sets: list[str], seeds: Sequence[int], out: Path, tune: bool) -> tuple[list[Path], list[Path]]:
    """`--run`: the SFT seeds through index, sft, eval and the SASRec seeds, every user."""
    from benchmarks.sft_seeds import seed_evaluations

    sets = [*sets, "eval.max_users=null"]
    seed_evaluations(spec, sets, out, seeds, run=True)
    sasrec = [(out / f"sasrec{seed}").resolve() for seed in seeds]
    tuned = RunLayout(sasrec[0]).baseline("sasrec") / "tune.json"
    for seed, run_dir in zip(seeds, sasrec):
        if not (RunLayout(run_dir).baseline("sasrec") / RANKS_FILE).exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            # Tuned once, on the first seed, with that seed's SFT training time as the budget (what
            # `--tune` defaults to in its own run); the other seeds train the chosen settings, as the
            # SFT seeds repeat one recipe.
            if not tune:
                extra = []
            elif run_dir == sasrec[0]:
                budget = read_json(RunLayout(out / f"seed{seed}").train_summary)["train_secs"]
                extra = ["--tune", "--budget-s", str(budget)]
            else:
                extra = ["--config", str(tuned)]
            print(f"sasrec seed {seed}: gream baseline sasrec {' '.join(extra)} ...", flush=True)
            gream("baseline sasrec", spec, [*sets, f"run_dir={run_dir}"], run_dir / "sasrec.log",
                  ["--seed", str(seed), *extra])
    return [(out / f"seed{s}").resolve() for s in seeds], sasrec


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sft", type=Path, nargs="+", help="finished SFT run dirs (one per seed)")
    ap.add_argument("--sasrec", type=Path, nargs="+", help="finished SASRec run dirs (one per seed)")
    ap.add_argument("--left", nargs="+", metavar="RUN_DIR:STAGE", help="instead of --sft: any evaluated stages, one per seed")
    ap.add_argument("--right", nargs="+", metavar="RUN_DIR:STAGE", help="instead of --sasrec: the stages --left is compared to")
    ap.add_argument("--names", nargs=2, default=["SFT", "SASRec"], metavar=("LEFT", "RIGHT"), help="their labels")
    ap.add_argument("--stage", default="sft", help="the generative stage to compare (sft or rl)")
    ap.add_argument("--spec", type=Path, default=REPO / "configs/demo.yaml", help="the data the runs split")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="spec override (every run)")
    ap.add_argument("--run", action="store_true", help="run the seeds first into --out (finished stages skipped)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="with --run")
    ap.add_argument("--out", type=Path, default=REPO / "runs/quality", help="with --run")
    ap.add_argument("--sasrec-tune", action="store_true", help="with --run: SASRec tuned on the first seed "
                    "(its SFT's time as budget), the chosen settings for the others")
    ap.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS),
                    help="valid alone to choose between settings without reading test")
    ap.add_argument("--resamples", type=int, default=RESAMPLES)
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ap.add_argument("--name", default="quality", help="the results file (benchmarks/results/NAME.json)")
    args = ap.parse_args(argv)

    if args.run:
        args.sft, args.sasrec = run_all(args.spec.resolve(), args.set, args.seeds, args.out, args.sasrec_tune)
    left = args.left or [f"{d}:{args.stage}" for d in args.sft or ()]
    right = args.right or [f"{d}:baselines/sasrec" for d in args.sasrec or ()]
    if not left or not right:
        ap.error("give --sft and --sasrec run dirs (or --left and --right stages), or --run")
    try:
        result = report(left, right, args.names, split_sizes(args.spec, args.set), args.resamples, splits=args.splits)
    except Exception as exc:  # missing or stale evaluations name their file and exit 2; anything else is a bug
        if getattr(exc, "exit_code", None) is None:
            raise
        print(f"quality: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    intervals = {key: result.pop(key) for key in ("pairs", "pooled", "segments")}
    record(args.name, result, intervals=intervals, script=__file__, argv=argv, data=spec_data(args.spec, args.set),
           settings={"left": left, "right": right, "set": args.set})
    return 0


if __name__ == "__main__":
    sys.exit(main())
