"""What does a long-tail reward (rl.objectives.<--objective>: tail, novelty, head_exposure) buy, and
at what accuracy? One SFT model, RL at several weights of it and several seeds, every user of both
splits.

From one SFT run folder (`index/`, `model/`, `sft/model/`): for each weight and seed, `gream rl`
with a likelihood-anchored recipe (`--recipe`, benchmarks/rl_gain.py's recipes; by default
`ce_anchor`) plus `rl.objectives.<objective>=<weight>`, in a run folder of its own, validated inside the
run for the curves; `rl/model` is the last step (`checkpoint.select=last`), because picking
each run's checkpoint by validation NDCG@10 would undo the trade-off being measured: the weight is
what is chosen, on validation. Then every run's model and the SFT model on every user of both
splits (beam metrics; benchmarks/rl_gain.py does both). Per weight: the seed-mean figures and the paired 95%
interval of RL - SFT (per user averaged over the weight's seeds, users resampled;
benchmarks/quality.py's pooled) of overall NDCG@10, tail share of the top 10 and tail-item
Recall@10 (the users whose target is a tail item). The weight is chosen on the valid rows
(`choose`): the largest tail-share gain among the weights whose validation NDCG@10 interval stays
above -MARGIN; test is read once. Writes objectives.json and the results file
benchmarks/results/objectives.json, from which benchmarks/report.py draws the long-tail trade-off
(NDCG@10 against tail share and against tail Recall@10, a point per weight with its intervals, the SFT model for reference).

  python benchmarks/objectives.py --base runs/base --out runs/objectives --weights 0 0.25 0.5 1 2 \\
      --seeds 0 1 2 --set rl.steps=60
  python benchmarks/objectives.py ... --screen     # RL runs and their validation curves only, no test
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks.quality import SPLITS, per_user, pooled  # noqa: E402
from benchmarks.results import record, spec_data  # noqa: E402
from benchmarks.rl_gain import RECIPES, curve, evaluate_runs, record_screen, run_parser, train_runs  # noqa: E402
from gream.compare import Stage, in_segment, load_stage  # noqa: E402
from sft.beyond_accuracy import coverage  # noqa: E402

ACCURACY, TAIL_SHARE, TAIL_RECALL = "ndcg@10", "tail_share@10", "tail recall@10"
SHOWN = (ACCURACY, TAIL_SHARE, TAIL_RECALL)
MARGIN = 0.003  # non-inferiority margin on NDCG@10: about 5% of the demo SFT model's figure


def recipe_name(objective: str, weight: float) -> str:
    return f"{objective}{weight:g}"


def means(stages: Sequence[Stage], split: str) -> dict[str, float]:
    """Seed means of the shown figures and coverage@10, each run on its own users."""
    out = {ACCURACY: [], TAIL_SHARE: [], TAIL_RECALL: [], "coverage@10": []}
    for stage in stages:
        values = per_user(stage, split)
        out[ACCURACY].append(values[ACCURACY].mean())
        out[TAIL_SHARE].append(values[TAIL_SHARE].mean())
        out[TAIL_RECALL].append(per_user(in_segment(stage, "tail"), split)["recall@10"].mean())
        out["coverage@10"].append(coverage(stage.ranks.splits[split].top[:, :10], stage.ranks.items))
    return {name: float(sum(v) / len(v)) for name, v in out.items()}


def against_sft(rl: Sequence[Stage], sft: Stage, resamples: int) -> dict[str, dict]:
    """Per split, RL - SFT of each shown figure: the pooled paired interval over the seeds."""
    out = {}
    for split in SPLITS:
        overall = pooled(rl, [sft], split, resamples, 0, (ACCURACY, TAIL_SHARE))
        tail = pooled([in_segment(s, "tail") for s in rl], [in_segment(sft, "tail")], split, resamples, 0,
                      ("recall@10",))
        out[split] = {**overall["metrics"], TAIL_RECALL: tail["metrics"]["recall@10"],
                      "users": overall["users"], "tail_users": tail["users"]}
    return out


def report(base: Path, runs: dict[str, list[Path]], objective: str, weights: Sequence[float], resamples: int) -> dict:
    sft = load_stage(f"{base}:sft")
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "load": [round(x, 2) for x in os.getloadavg()],
           "sft": {split: means([sft], split) for split in SPLITS}, "weights": {}}
    for weight in weights:
        dirs = runs[recipe_name(objective, weight)]
        rl = [load_stage(f"{d}:rl") for d in dirs]
        out["weights"][f"{weight:g}"] = {
            "runs": [str(d) for d in dirs], "selected_steps": [curve(d)["selected_step"] for d in dirs],
            "figures": {split: means(rl, split) for split in SPLITS}, "rl_minus_sft": against_sft(rl, sft, resamples)}
    return out


def choose(intervals: dict[str, dict]) -> dict:
    """The weight chosen on validation: of the weights whose valid NDCG@10 interval (RL - SFT) has its
    low end above -MARGIN, the one with the largest valid tail-share gain; None when no weight is
    non-inferior."""
    held = {w: d["valid"] for w, d in intervals.items() if d["valid"][ACCURACY]["low"] > -MARGIN}
    weight = max(held, key=lambda w: held[w][TAIL_SHARE]["diff"]) if held else None
    return {"weight": weight, "margin": MARGIN,
            "rule": f"largest valid {TAIL_SHARE} gain with the valid {ACCURACY} interval above -{MARGIN}"}


def format_report(r: dict) -> str:
    lines = [f"{r['objective']} reward sweep, {r['date']}, load average {' / '.join(map(str, r['load']))}",
             "RL - SFT per user averaged over seeds, 95% paired bootstrap interval; seed means in brackets"]
    for split in SPLITS:
        sft = r["sft"][split]
        lines.append(f"\n{split}: SFT " + ", ".join(f"{k} {v:.4f}" for k, v in sft.items()))
        for weight, w in r["weights"].items():
            diffs = w["rl_minus_sft"][split]
            parts = [f"{m} {diffs[m]['diff']:+.4f} [{diffs[m]['low']:+.4f}, {diffs[m]['high']:+.4f}] "
                     f"({w['figures'][split][m]:.4f})" for m in SHOWN]
            lines.append(f"  {r['objective']} {weight:>5} (steps {w['selected_steps']}): " + "; ".join(parts)
                         + f"; coverage@10 {w['figures'][split]['coverage@10']:.4f}")
    chosen = r["chosen"]
    lines.append(f"\nchosen on validation ({chosen['rule']}): {r['objective']} weight {chosen['weight']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = run_parser(__doc__.splitlines()[0])
    p.add_argument("--weights", nargs="+", type=float, default=[0.0, 0.25, 0.5, 1.0, 2.0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--objective", default="tail", choices=("tail", "novelty", "head_exposure", "diversity"),
                   help="the rl.objectives weight swept")
    p.add_argument("--recipe", default="ce_anchor", choices=sorted(RECIPES), help="the RL recipe the reward joins")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every RL run")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--screen", action="store_true", help="RL runs and their validation curves only")
    args = p.parse_args(argv)
    sets = ["rl.eval_every=10", "checkpoint.select=last", *args.set]  # curves in the run; the last step
    recipes = {recipe_name(args.objective, w): [*RECIPES[args.recipe], f"rl.objectives.{args.objective}={w}"]
               for w in args.weights}
    runs = train_runs(args.spec, args.base, args.out, recipes, args.seeds, sets)
    provenance = {"script": __file__, "argv": argv, "model": args.base / "sft/model", "data": spec_data(args.spec),
                  "settings": {"recipe": args.recipe, "objective": args.objective, "sets": sets, "seeds": args.seeds}}
    if args.screen:
        record_screen("objectives_screen", runs, **provenance)
        return 0
    base = args.base.resolve()
    evaluate_runs(args.spec, sets, base, runs, sampling=False)
    result = {"recipe": args.recipe, "objective": args.objective, "sets": sets,
              **report(base, runs, args.objective, args.weights, args.resamples)}
    result["chosen"] = choose({w: entry["rl_minus_sft"] for w, entry in result["weights"].items()})
    (args.out / "objectives.json").write_text(json.dumps(result, indent=1))
    print(format_report(result))
    intervals = {w: entry.pop("rl_minus_sft") for w, entry in result["weights"].items()}
    record("objectives", {"recipe": args.recipe, "objective": args.objective, "sft": result["sft"], "weights": result["weights"],
                          "chosen": result["chosen"]},
           intervals=intervals, **provenance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
