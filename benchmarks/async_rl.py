"""Synchronous against asynchronous RL (`rl.max_staleness` 0, 1, 2) on one spec and one SFT model:
steps/s, completions trained/s and the in-run validation NDCG@10 after the same number of steps.

From one SFT run folder (`index/`, `model/`, `sft/model/`, linked as benchmarks/rl_gain.py does),
each repeat runs `gream rl` once per staleness, the order rotated between repeats so no setting
always runs first (interleaved), every setting with the same seeds (`--seeds`: repeat r runs seed
r mod len; default seed 0 throughout), steps, prompts, group size and
`rl.tis_cap` (the correction async needs; on-policy it only absorbs rounding). Speed comes from the
run's own metrics: the steps after the first (the first has nothing to overlap with), each step's
`time/step` (from taking its batch to the end of its push), so engine start-up and validation are
left out. Validation: `rl.eval_every` = steps, the same 500 users for every run.

    python benchmarks/async_rl.py --base runs/quality/seed0 --out runs/async_rl --staleness 0 1 2 \\
        --repeats 3 --set rl.steps=10
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks.results import record, spec_data  # noqa: E402
from benchmarks.rl_gain import prepare, run_parser, run_rl  # noqa: E402
from cluster.metrics_log import read_metrics  # noqa: E402
from cluster.run_layout import RunLayout  # noqa: E402

TIS_CAP = 2.0


def figures(run_dir: Path) -> dict:
    """Speed over the steps after the first, and the last in-run validation, from rl/metrics.jsonl."""
    rows = [r for r in read_metrics(RunLayout(run_dir).metrics("rl")) if r["step"] > 0]
    steady = rows[1:]
    seconds = sum(r["time/step"] for r in steady)
    trained = sum(r["kept_groups"] for r in steady) * (rows[0]["completions"] // max(rows[0]["sampled_groups"], 1))
    validated = [r for r in rows if r.get("val/ndcg@10") is not None]
    lags = [r["staleness/max"] for r in rows if r.get("staleness/max") is not None]
    return {"steps": len(rows), "timed_steps": len(steady), "seconds": round(seconds, 2),
            "steps_per_s": len(steady) / seconds if seconds else None,
            "completions_trained_per_s": trained / seconds if seconds else None,
            "completions_sampled_per_s": sum(r["completions"] for r in steady) / seconds if seconds else None,
            "val_ndcg@10": validated[-1]["val/ndcg@10"] if validated else None,
            "val_step": validated[-1]["step"] if validated else None,
            "max_staleness_seen": max(lags) if lags else None}


def summary(runs: dict[int, list[dict]]) -> dict:
    """Per staleness: median and range of each figure over the repeats, and the median speed-up of
    steps/s and completions trained/s against staleness 0 (ratio of medians)."""
    keys = ("steps_per_s", "completions_trained_per_s", "completions_sampled_per_s", "val_ndcg@10")
    out = {}
    for n, figs in runs.items():
        out[n] = {k: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                  for k in keys if (v := [f[k] for f in figs if f[k] is not None])}
    base = out.get(0, {})
    for n, row in out.items():
        for k in ("steps_per_s", "completions_trained_per_s"):
            if n and k in row and k in base:
                row[f"{k}_vs_sync"] = row[k]["median"] / base[k]["median"]
    return out


def format_summary(r: dict) -> str:
    lines = [f"async RL, {r['date']}; {r['cores']} cores, load before {r['load_before']} after {r['load_after']}",
             f"{'staleness':>9}  {'steps/s':>22}  {'trained compl./s':>22}  {'val NDCG@10':>24}  speed-up"]
    for n, row in sorted(r["summary"].items(), key=lambda kv: int(kv[0])):
        def cell(k, fmt):
            v = row.get(k)
            return f"{v['median']:{fmt}} [{v['min']:{fmt}}, {v['max']:{fmt}}]" if v else "-"
        up = (f"{row['steps_per_s_vs_sync']:.2f}x steps, {row['completions_trained_per_s_vs_sync']:.2f}x rows"
              if "steps_per_s_vs_sync" in row else "")
        lines.append(f"{n:>9}  {cell('steps_per_s', '.3f'):>22}  {cell('completions_trained_per_s', '.1f'):>22}  "
                     f"{cell('val_ndcg@10', '.4f'):>24}  {up}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = run_parser(__doc__.splitlines()[0])
    p.add_argument("--staleness", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seeds", nargs="+", type=int, default=[0],
                   help="RL seeds: repeat r runs seed r mod len (so 3 repeats over 0 1 2 give the seed spread)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from cluster.spec import load_spec

    steps = load_spec(args.spec, args.set).rl.steps
    load_before = [round(x, 2) for x in os.getloadavg()]
    runs: dict[int, list[dict]] = {n: [] for n in args.staleness}
    for repeat in range(args.repeats):
        order = args.staleness[repeat % len(args.staleness):] + args.staleness[:repeat % len(args.staleness)]
        for n in order:
            seed = args.seeds[repeat % len(args.seeds)]
            run_dir = (args.out / f"staleness{n}" / f"repeat{repeat}").resolve()
            if not RunLayout(run_dir).model("rl").exists():
                prepare(args.base, run_dir)
                sets = [*args.set, f"rl.max_staleness={n}", f"rl.tis_cap={TIS_CAP}", f"rl.eval_every={steps}"]
                secs = run_rl(args.spec, run_dir, seed, sets, run_dir / "rl.log")
                print(f"staleness {n} repeat {repeat} seed {seed}: {secs:.0f} s", flush=True)
            runs[n].append({**figures(run_dir), "seed": seed, "run_dir": str(run_dir)})
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cores": os.cpu_count(), "load_before": load_before,
              "load_after": [round(x, 2) for x in os.getloadavg()], "runs": runs, "summary": summary(runs)}
    (args.out / "async_rl.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1) if args.json else format_summary(result))
    record("async_rl", {"summary": result["summary"], "runs": runs}, script=__file__, argv=argv,
           model=args.base / "sft/model", data=spec_data(args.spec, args.set),
           settings={"staleness": args.staleness, "seeds": args.seeds, "set": args.set, "tis_cap": TIS_CAP})
    return 0


if __name__ == "__main__":
    sys.exit(main())
