"""SRPO vs GRPO vs Dr.GRPO from one SFT checkpoint: `gream rl` then `gream eval` per estimator.

Layout under `--out` (never the spec's own run_dir): `base/` holds a copy of the SFT model
(`sft/model`) and of the SID index (`index/NAME.index.json`), which is what the rl and eval stages
read from a run_dir; each estimator and RL seed gets `<advantage>/seed<k>/` with `index` and `sft`
linked to `base/`, and runs

    gream rl   SPEC --set run_dir=OUT/<advantage>/seed<k> --set rl.advantage=<advantage> --set rl.seed=<k> ...
    gream eval SPEC --set run_dir=OUT/<advantage>/seed<k> ...   (sft link removed: the RL model only)

and `gream eval` on `base/` once for the SFT row. A stage whose `stage.json` matches the spec (the
same hash `gream launch` checks) is not run again, so an interrupted comparison continues where it
stopped. Everything else (prompts, seed, lr, KL, group size, dynamic sampling) is the spec's, the
same for every estimator. The table: mean residual reward per `--window` steps, the mean share of
dropped groups (all-miss / all-hit / constant) over all steps, and valid/test Recall@10, NDCG@10,
Pass@1/5/10, each the median over the seeds' runs; a second table lists test Recall@10 per seed.

    python benchmarks/advantage_compare.py --steps 30 --seeds 0 1 2
    python benchmarks/advantage_compare.py --steps 3 --max-users 20 --out /tmp/advcmp   # smoke
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/advantage_compare.py` puts benchmarks/ on the path, not the repo
    sys.path.insert(0, str(REPO))
from benchmarks.results import record  # noqa: E402
from cluster.run_layout import RunLayout  # noqa: E402

ADVANTAGES = ("srpo", "grpo", "dr_grpo")
DROPPED = ("all_miss", "all_hit", "constant")
EVAL_KEYS = ("recall@10", "ndcg@10", "pass@1", "pass@5", "pass@10")
GREAM = REPO / ".venv/bin/gream"


# --------------------------------------------------------------------------- table (pure: tested on tiny files)
def reward_windows(records: Sequence[dict], window: int) -> dict[str, float | None]:
    """Mean `reward/mean` over consecutive blocks of `window` steps, keyed "steps A-B" (the last block
    may be shorter); a block without a finite value maps to None."""
    blocks: dict[int, list[float]] = {}
    last: dict[int, int] = {}
    for r in records:
        block = (r["step"] - 1) // window
        last[block] = max(last.get(block, 0), r["step"])
        value = r.get("reward/mean")
        if isinstance(value, (int, float)) and value == value:
            blocks.setdefault(block, []).append(float(value))
    return {f"steps {b * window + 1}-{last[b]}": (statistics.fmean(blocks[b]) if b in blocks else None)
            for b in sorted(last)}


def dropped_shares(records: Sequence[dict]) -> dict[str, float | None]:
    """Mean over steps of each `dropped/<kind>` share (dropped groups / sampled groups that step)."""
    out = {}
    for kind in DROPPED:
        values = [r[f"dropped/{kind}"] for r in records if isinstance(r.get(f"dropped/{kind}"), (int, float))]
        out[kind] = statistics.fmean(values) if values else None
    return out


def column(records: Sequence[dict] | None, evaluation: dict | None, window: int) -> dict[str, float | None]:
    """One estimator's (or the SFT model's, records None) column: row label -> value."""
    col: dict[str, float | None] = {}
    if records:
        col.update({f"reward {k}": v for k, v in reward_windows(records, window).items()})
        col.update({f"dropped {k}": v for k, v in dropped_shares(records).items()})
        hits = [r["hit_rate"] for r in records if isinstance(r.get("hit_rate"), (int, float))]
        col["hit rate (mean)"] = statistics.fmean(hits) if hits else None
    for split in ("valid", "test"):
        metrics = (evaluation or {}).get(split, {})
        col.update({f"{split} {k}": metrics.get(k) for k in EVAL_KEYS})
    return col


def median_column(columns: Sequence[dict[str, float | None]]) -> dict[str, float | None]:
    """Label-wise median over runs' columns (labels in first-seen order); None where no run has a value."""
    labels = list(dict.fromkeys(label for col in columns for label in col))
    values = {label: [col[label] for col in columns if col.get(label) is not None] for label in labels}
    return {label: (statistics.median(v) if v else None) for label, v in values.items()}


def format_table(columns: dict[str, dict[str, float | None]], title: str = "") -> str:
    """Rows = the union of the columns' labels in first-seen order, one column per name; '-' where missing."""
    rows = list(dict.fromkeys(label for col in columns.values() for label in col))
    rows.sort(key=lambda label: label.startswith(("valid ", "test ")))  # training rows first, stable otherwise
    width = max([len(r) for r in rows] + [6]) + 2
    cell = max([10] + [len(name) + 1 for name in columns])  # a name of 10 characters still gets a space
    lines = [title] if title else []
    lines.append(f"{'':<{width}}" + "".join(f"{name:>{cell}}" for name in columns))
    for label in rows:
        cells = [col.get(label) for col in columns.values()]
        lines.append(f"{label:<{width}}" + "".join(f"{'-':>{cell}}" if v is None else f"{v:>{cell}.4f}" for v in cells))
    return "\n".join(lines)


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def read_metrics(run_dir: Path) -> list[dict]:
    from gream.run_state import read_jsonl

    return read_jsonl(RunLayout(run_dir).metrics("rl"))


# --------------------------------------------------------------------------- running the stages
def prepare_base(base: Path, sft_model: Path, index_file: Path) -> None:
    """Copies, not links: the stages write beside their inputs (e.g. the trie table beside the model)."""
    model = RunLayout(base).model("sft")
    if not (model / "config.json").exists():
        shutil.rmtree(model, ignore_errors=True)
        shutil.copytree(sft_model, model)
    RunLayout(base).stage("index").mkdir(parents=True, exist_ok=True)
    for name in (index_file.name, "sid_vocab.txt"):
        src = index_file.parent / name
        if src.exists() and not (RunLayout(base).stage("index") / name).exists():
            shutil.copy2(src, RunLayout(base).stage("index") / name)


def link(path: Path, target: Path) -> None:
    if path.is_symlink() or path.exists():
        return
    path.symlink_to(target, target_is_directory=True)


def gream(command: str, spec: Path, sets: list[str], log: Path, extra: Sequence[str] = ()) -> float:
    """Run `gream COMMAND SPEC EXTRA... --set ...` from the repository root (relative data paths
    resolve there) on this checkout's code (PYTHONPATH first: a worktree sharing another checkout's
    editable .venv runs its own files), output to `log`; returns the seconds taken, exits with the
    tail of the log on failure."""
    argv = [str(GREAM), *command.split(), str(spec), *extra] + [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        sys.exit(f"{' '.join(argv)} failed with exit code {proc.returncode} after {seconds:.0f} s; "
                 f"log {log}:\n{tail}")
    return seconds


COMMANDS = ("index", "sft", "rl", "eval")  # the stages with a `gream` command of their own


def run_stage(stage: str, spec_path: Path, sets: list[str], run_dir: Path, what: str) -> None:
    from cluster.spec import load_spec
    from gream.launch import RESUMABLE, is_done

    if is_done(load_spec(spec_path, sets), stage):
        print(f"{what}: {stage} up to date in {run_dir}, not run again", flush=True)
        return
    print(f"{what}: gream {stage} ...", end=" ", flush=True)
    # An SFT or RL run cut short continues from its checkpoints (a fresh run into them is refused);
    # with none, --resume starts the stage afresh. A stage without a command of its own (sasrec) runs
    # as `gream launch` of that stage alone.
    command, sets = (stage, sets) if stage in COMMANDS else ("launch", [*sets, f"stages=[{stage}]"])
    seconds = gream(command, spec_path, sets, run_dir / f"{stage}.log", ["--resume"] if stage in RESUMABLE else [])
    print(f"{seconds:.0f} s (log {run_dir / f'{stage}.log'})", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=REPO / "configs/demo.yaml")
    ap.add_argument("--sft-model", type=Path, help="SFT Hugging Face folder (default: the spec's run_dir/sft/model)")
    ap.add_argument("--index", type=Path,
                    help="its NAME.index.json (default: the spec's run_dir/index/NAME.index.json)")
    ap.add_argument("--out", type=Path, default=REPO / "runs/advantage_compare", help="where the runs go")
    ap.add_argument("--steps", type=int, default=30, help="RL steps per estimator")
    ap.add_argument("--max-users", type=int, help="eval users per split (default: the spec's eval.max_users)")
    ap.add_argument("--window", type=int, default=10, help="steps per reward window")
    ap.add_argument("--advantages", nargs="+", choices=ADVANTAGES, default=list(ADVANTAGES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="one RL run per seed (rl.seed) and estimator")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra spec override for every run (repeatable), e.g. rl.lr=2e-5")
    ap.add_argument("--table-only", action="store_true", help="print the table from what --out holds; run nothing")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.window < 1:
        ap.error("--steps and --window must be >= 1")

    from cluster.spec import load_spec
    from indexing.build import index_path

    spec_path = args.spec.resolve()
    spec = load_spec(spec_path, args.set)
    own_run = (REPO / spec.run_path).resolve()
    out = args.out.resolve()
    if out == own_run or own_run in out.parents or out in own_run.parents:
        ap.error(f"--out {out} overlaps the spec's run_dir {own_run}; this benchmark must not write there")
    sft_model = (args.sft_model or RunLayout(own_run).model("sft")).resolve()
    index_file = (args.index or REPO / index_path(spec)).resolve()
    common = ([f"eval.max_users={args.max_users}"] if args.max_users else []) + args.set
    base = out / "base"

    if not args.table_only:
        if not (sft_model / "config.json").exists() or not index_file.exists():
            print(f"need an SFT model ({sft_model}) and its index ({index_file}): run `gream index` and `gream sft` "
                  f"on {args.spec} first, or pass --sft-model and --index", file=sys.stderr)
            return 2
        prepare_base(base, sft_model, index_file)
        run_stage("eval", spec_path, common + [f"run_dir={base}"], base, "sft")
        # Seed-major: an interrupted comparison still has every estimator at the seeds it finished.
        for seed in args.seeds:
            for adv in args.advantages:
                run_dir = out / adv / f"seed{seed}"
                run_dir.mkdir(parents=True, exist_ok=True)
                link(RunLayout(run_dir).stage("index"), RunLayout(base).stage("index"))
                link(RunLayout(run_dir).stage("sft"), RunLayout(base).stage("sft"))
                sets = common + [f"run_dir={run_dir}", f"rl.advantage={adv}", f"rl.steps={args.steps}",
                                 f"rl.seed={seed}"]
                run_stage("rl", spec_path, sets, run_dir, f"{adv} seed {seed}")
                # gream eval evaluates every trained stage it finds: without the sft link only the RL model.
                RunLayout(run_dir).stage("sft").unlink()
                try:
                    run_stage("eval", spec_path, sets, run_dir, f"{adv} seed {seed}")
                finally:
                    link(RunLayout(run_dir).stage("sft"), RunLayout(base).stage("sft"))

    columns = {"sft": column(None, read_json(RunLayout(base).eval_file("sft")), args.window)}
    per_seed: dict[str, dict[str, float | None]] = {}
    for adv in args.advantages:
        runs = [out / adv / f"seed{seed}" for seed in args.seeds]
        cols = [column(read_metrics(r), read_json(RunLayout(r).eval_file("rl")), args.window) for r in runs]
        columns[adv] = median_column(cols)
        per_seed[adv] = {f"seed {seed}": col.get("test recall@10") for seed, col in zip(args.seeds, cols)}
    users = {split: m.get("users") for split, m in (read_json(RunLayout(base).eval_file("sft")) or {}).items()
             if split != "segments"}
    print(format_table(columns, f"\n{args.steps} RL steps per estimator from {sft_model} ({args.spec.name}); "
                                f"median over RL seeds {args.seeds}; eval users {users or '-'}; runs in {out}"))
    print(format_table(per_seed, "\ntest recall@10 per RL seed"))
    record("advantage_compare", {"median": columns, "test recall@10 per seed": per_seed, "users": users},
           script=__file__, argv=argv, model=sft_model, data=REPO / spec.data.path,
           settings={"steps": args.steps, "seeds": args.seeds, "set": args.set})
    return 0


if __name__ == "__main__":
    sys.exit(main())
