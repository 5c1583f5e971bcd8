"""Does RL post-training make the recommender better than its SFT model? One SFT model, several
RL recipes, several RL seeds, every user of both splits.

From one SFT run folder (`index/`, `model/`, `sft/model/`): for each recipe and RL seed, `gream rl`
in a run folder of its own with the SFT artefacts linked in, validated inside the run
(`rl.eval_every`, a fixed sample of validation users), so `rl/model` is the validation-selected
checkpoint (step 0 = the SFT weights when no step beat them). Each selected model, and the SFT model
once, is then evaluated on every user of both splits (a run that selected step 0 serves the SFT
weights, so it takes the SFT model's evaluation) (trie beam Recall/NDCG@5/10, Pass@10 unless
--no-pass). Printed: per-seed and median figures, the step each run selected, and the paired 95%
interval of RL minus SFT per recipe (per user, the metric averaged over the recipe's seeds;
users resampled; `benchmarks/quality.py`'s pooled interval). Test is read once per recipe here;
recipes and settings are chosen on the validation rows.

  python benchmarks/rl_gain.py --base runs/base --out runs/rl_gain --recipes sample_srpo beam_srpo beam_rank \
      --seeds 0 1 2 --set rl.steps=60 --set rl.eval_every=10
  python benchmarks/rl_gain.py ... --screen     # RL runs and their validation curves only, no test
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks.advantage_compare import median_column  # noqa: E402
from benchmarks.quality import SPLITS, pooled  # noqa: E402
from benchmarks.results import record, spec_data  # noqa: E402
from cluster.eval_record import EvalRecordError, read_ranks  # noqa: E402
from cluster.metrics_log import read_metrics  # noqa: E402
from cluster.run_layout import EVAL_FILE, RANKS_FILE, RunLayout  # noqa: E402
from gream.compare import load_stage  # noqa: E402

# Each recipe's equal-compute control (the same rollouts or sampled groups, targets and steps, trained
# by cross-entropy alone): a gain counts only against it as well as against the SFT model.
CONTROLS = {"beam_inject_pairwise": "beam_inject_sft", "teacher_rank": "ce_only", "ce_anchor": "ce_only",
            "beam_teacher": "beam_inject_sft"}


def teacher(form: str, gate: str = "none") -> str:
    """The rl.teacher override: the SFT run's SASRec (`{base}`, filled in per run) at a reward form and gate."""
    return f"rl.teacher={{path: '{{base}}/baselines/sasrec', form: {form}, gate: {gate}}}"


# Overrides on top of the spec, per recipe (chosen on validation; BENCHMARKS.md, "RL over SFT").
RECIPES: dict[str, list[str]] = {
    "sample_srpo": [],
    "beam_srpo": ["rl.rollout=beam"],
    "beam_rank": ["rl.rollout=beam", "rl.reward=binary", "rl.rank_penalty=1.0"],
    "mixed_rank": ["rl.rollout=mixed", "rl.rank_penalty=1.0"],
    "beam_rank_grpo": ["rl.rollout=beam", "rl.reward=binary", "rl.rank_penalty=1.0", "rl.advantage=grpo"],
    # What SFT lacks (DESIGN.md section 11): the likelihood term kept, groups repaired, a teacher.
    # `{base}` is the SFT run folder; the teacher recipes need `gream baseline sasrec` run there first.
    "ce_anchor": ["rl.ce_coef=1.0"],
    "beam_inject_pairwise": ["rl.rollout=beam", "rl.reward=binary", "rl.inject_target=true", "rl.advantage=pairwise",
                             "rl.ce_coef=1.0"],
    # The equal-compute control of beam_inject_pairwise: its rollouts, steps and targets, CE alone.
    "beam_inject_sft": ["rl.rollout=beam", "rl.reward=binary", "rl.inject_target=true", "rl.advantage=pairwise",
                        "rl.ce_coef=1.0", "rl.pg_coef=0"],
    "teacher_rank": ["rl.ce_coef=1.0", teacher("rank")],
    # AdaGRPO's gates on the teacher term (rl.teacher.gate), chosen on validation against teacher_rank
    **{f"teacher_rank_{gate}": ["rl.ce_coef=1.0", teacher("rank", gate)] for gate in ("separates", "uncertain", "both")},
    # The equal-compute control of ce_anchor and the teacher_rank recipes: their sampled groups and
    # steps, trained by the targets' cross-entropy alone.
    "ce_only": ["rl.ce_coef=1.0", "rl.pg_coef=0"],
    "beam_teacher": ["rl.rollout=beam", "rl.reward=binary", "rl.ce_coef=1.0", teacher("group_softmax")],
}
LINKED = ("index", "model", "sft")  # the SFT run's artefacts every RL run starts from
METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "pass@10")


def prepare(base: Path, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        link = run_dir / name
        if not link.exists():
            link.symlink_to((base / name).resolve(), target_is_directory=True)


def run_rl(spec: Path, run_dir: Path, seed: int, sets: Sequence[str], log: Path) -> float:
    """`gream rl --resume` in a subprocess (its own Ray): a run cut short continues from its
    checkpoints, a new one starts from the SFT model; returns the wall seconds."""
    cmd = [sys.executable, "-m", "gream.cli", "rl", str(spec), "--resume",
           "--set", f"run_dir={run_dir}", "--set", f"rl.seed={seed}"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    start = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc:
        raise SystemExit(f"gream rl failed (exit {rc}); see {log}")
    return time.perf_counter() - start


def evaluate_stage(spec: Path, sets: Sequence[str], run_dir: Path, stage: str, sampling: bool) -> None:
    """Every user of both splits; eval.json and ranks.json in `run_dir/stage`."""
    from cluster.eval_record import write_eval
    from cluster.placement import init_ray
    from cluster.spec import load_spec
    from indexing.dataset import split_from_spec
    from indexing.sid import SidIndex
    from rl_system.evaluate import evaluate_model

    job = load_spec(spec, [*sets, "eval.max_users=null", f"run_dir={run_dir}"])
    init_ray(job.cluster)
    layout = RunLayout(run_dir)
    result, ranks = evaluate_model(job, layout.model(stage), SidIndex.load(layout.index_file(job.data.name)),
                                   split_from_spec(job), sampling)
    write_eval(layout.stage(stage), result, ranks)


def curve(run_dir: Path) -> dict:
    """The run's validation curve, reward and share of sampled groups kept by step, and the
    checkpoint it selected."""
    rows = read_metrics(RunLayout(run_dir).metrics("rl"))
    points = {r["step"]: r["val/ndcg@10"] for r in rows if r.get("val/ndcg@10") is not None}
    selection = json.loads(RunLayout(run_dir).selection.read_text())
    return {"val_ndcg@10": points, "selected_step": selection["step"], "last_step": selection["last_step"],
            "reward": {r["step"]: r["reward/mean"] for r in rows if r.get("reward/mean") is not None},
            "kept_share": {r["step"]: r["kept_groups"] / r["sampled_groups"] for r in rows if r.get("sampled_groups")},
            "gate_open": {r["step"]: r["teacher/gate_open"] for r in rows if r.get("teacher/gate_open") is not None}}


def figures(run_dir: Path, stage: str) -> dict[str, float]:
    result = json.loads(RunLayout(run_dir).eval_file(stage).read_text())
    return {f"{split} {m}": result[split][m] for split in SPLITS for m in METRICS if m in result[split]}


def report(base: Path, runs: dict[str, list[Path]], resamples: int) -> dict:
    sft = load_stage(f"{base}:sft")
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "load": [round(x, 2) for x in os.getloadavg()],
           "sft": figures(base, "sft"), "recipes": {}, "against_control": {}}
    for recipe, dirs in runs.items():
        columns = {d.name: figures(d, "rl") for d in dirs}
        rl = [load_stage(f"{d}:rl") for d in dirs]
        out["recipes"][recipe] = {
            "seeds": columns, "median": median_column(list(columns.values())),
            "curves": {d.name: curve(d) for d in dirs},
            "rl_minus_sft": {split: pooled(rl, [sft], split, resamples, 0) for split in SPLITS}}
    for recipe, control in CONTROLS.items():
        if recipe in runs and control in runs:
            rl, ctl = ([load_stage(f"{d}:rl") for d in runs[name]] for name in (recipe, control))
            out["against_control"][f"{recipe} - {control}"] = {split: pooled(rl, ctl, split, resamples, 0)
                                                               for split in SPLITS}
    return out


def format_report(r: dict) -> str:
    keys = list(r["sft"])
    lines = [f"RL over SFT, {r['date']}, load average {' / '.join(map(str, r['load']))}",
             f"{'':<28}" + "".join(f"{k:>17}" for k in keys),
             f"{'SFT':<28}" + "".join(f"{r['sft'][k]:>17.4f}" for k in keys)]
    for recipe, rec in r["recipes"].items():
        for name, col in rec["seeds"].items():
            c = rec["curves"][name]
            label = f"{recipe} {name} (step {c['selected_step']}/{c['last_step']})"
            lines.append(f"{label:<28}" + "".join(f"{col.get(k, float('nan')):>17.4f}" for k in keys))
        med = rec["median"]
        lines.append(f"{recipe + ' median':<28}" + "".join(f"{med.get(k) or float('nan'):>17.4f}" for k in keys))
    lines.append("\nRL - SFT, per user averaged over the recipe's seeds, 95% bootstrap interval:")
    for recipe, rec in r["recipes"].items():
        for split, res in rec["rl_minus_sft"].items():
            parts = [f"{m} {v['diff']:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}] {v['verdict']}"
                     for m, v in res["metrics"].items()]
            lines.append(f"  {recipe} {split} ({res['users']} users): " + "; ".join(parts))
    if r["against_control"]:
        lines.append("\nRL - its equal-compute control, per user averaged over each side's seeds:")
    for pair, splits in r["against_control"].items():
        for split, res in splits.items():
            m = res["metrics"]["ndcg@10"]
            lines.append(f"  {pair} {split} ({res['users']} users): ndcg@10 {m['diff']:+.4f} [{m['low']:+.4f}, "
                         f"{m['high']:+.4f}] {m['verdict']}")
    return "\n".join(lines)


def screen_line(recipe: str, run_dir: Path, secs: float) -> str:
    c = curve(run_dir)
    pts = c["val_ndcg@10"]
    best = max(pts, key=lambda s: (pts[s], s))
    return (f"{recipe} {run_dir.name}: val NDCG@10 step 0 {pts.get(0, float('nan')):.4f}, best {pts[best]:.4f} "
            f"at step {best}; curve {json.dumps({s: round(v, 4) for s, v in pts.items()})}; {secs:.0f} s")


def train_runs(spec: Path, base: Path, out: Path, recipes: dict[str, list[str]], seeds: Sequence[int],
               sets: Sequence[str]) -> dict[str, list[Path]]:
    """Each recipe (its overrides, `{base}` the SFT run folder) and seed: `gream rl` in
    `out/<recipe>/seed<k>`, unless that run already selected its model; returns each recipe's runs."""
    runs: dict[str, list[Path]] = {}
    for recipe, overrides in recipes.items():
        for seed in seeds:
            run_dir = (out / recipe / f"seed{seed}").resolve()
            if not RunLayout(run_dir).selection.exists():
                prepare(base, run_dir)
                recipe_sets = [s.replace("{base}", str(base.resolve())) for s in overrides]
                secs = run_rl(spec, run_dir, seed, [*sets, *recipe_sets], run_dir / "rl.log")
                print(screen_line(recipe, run_dir, secs), flush=True)
            runs.setdefault(recipe, []).append(run_dir)
    return runs


def evaluated(run_dir: Path, stage: str) -> bool:
    """Whether the stage holds an evaluation with the users' top lists (one written before
    evaluations kept them has no beyond-accuracy figures, and is done again)."""
    try:
        return all(s.top is not None for s in read_ranks(RunLayout(run_dir).stage(stage)).splits.values())
    except EvalRecordError:
        return False


def evaluate_runs(spec: Path, sets: Sequence[str], base: Path, runs: dict[str, list[Path]], sampling: bool) -> None:
    """The SFT model and every run's selected model on every user of both splits, each once: a run
    that selected step 0 serves the SFT weights, so it takes the SFT model's evaluation."""
    if not evaluated(base, "sft"):
        evaluate_stage(spec, sets, base, "sft", sampling)
    for dirs in runs.values():
        for run_dir in dirs:
            layout = RunLayout(run_dir)
            if evaluated(run_dir, "rl"):
                continue
            if curve(run_dir)["selected_step"] == 0:
                for name in (EVAL_FILE, RANKS_FILE):
                    shutil.copy2(RunLayout(base).stage("sft") / name, layout.stage("rl") / name)
            else:
                evaluate_stage(spec, sets, run_dir, "rl", sampling)


def run_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every RL-from-one-SFT-run benchmark takes (rl_gain, objectives, async_rl)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--spec", type=Path, default=REPO / "configs/demo.yaml")
    p.add_argument("--base", type=Path, required=True, help="SFT run folder (index/, model/, sft/model/)")
    p.add_argument("--out", type=Path, required=True)
    return p


def record_screen(name: str, runs: dict[str, list[Path]], **provenance) -> None:
    """A screen's results file: each recipe's validation curves."""
    record(name, {"recipes": {r: {"curves": {d.name: curve(d) for d in dirs}} for r, dirs in runs.items()}},
           **provenance)


def main(argv: Sequence[str] | None = None) -> int:
    p = run_parser(__doc__.splitlines()[0])
    p.add_argument("--recipes", nargs="+", default=["sample_srpo", "beam_srpo", "beam_rank"], choices=sorted(RECIPES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every RL run")
    p.add_argument("--screen", action="store_true", help="RL runs and validation curves only")
    p.add_argument("--no-pass", action="store_true", help="beam metrics only (no Pass@K sampling)")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--name", default="rl_gain", help="the results file (benchmarks/results/NAME.json; "
                   "NAME_screen.json with --screen)")
    args = p.parse_args(argv)
    sets = ["rl.eval_every=10", *args.set]  # validation inside the run unless overridden
    runs = train_runs(args.spec, args.base, args.out, {r: RECIPES[r] for r in args.recipes}, args.seeds, sets)
    provenance = {"script": __file__, "argv": argv, "model": args.base / "sft/model", "data": spec_data(args.spec),
                  "settings": {"sets": sets, "recipes": {r: RECIPES[r] for r in args.recipes}}}
    if args.screen:
        record_screen(f"{args.name}_screen", runs, **provenance)
        return 0
    base = args.base.resolve()
    evaluate_runs(args.spec, sets, base, runs, not args.no_pass)
    result = report(base, runs, args.resamples)
    (args.out / "rl_gain.json").write_text(json.dumps(result, indent=1))
    print(format_report(result))
    intervals = {**{r: rec.pop("rl_minus_sft") for r, rec in result["recipes"].items()}, **result.pop("against_control")}
    record(args.name, {"sft": result["sft"], "recipes": result["recipes"]}, intervals=intervals, **provenance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
