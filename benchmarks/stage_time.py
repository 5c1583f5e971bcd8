"""Wall time of gream stages on a spec, each in a fresh process, beside the stage's own timings.

`gream STAGE SPEC --set run_dir=OUT` runs for each stage in order (index before sft: SFT reads the
index; `sasrec` is `gream baseline sasrec` with the settings and seed of the spec's `sasrec` section),
in a run folder that must not hold them yet, so nothing is cached (the index's embeddings included).
Printed and recorded per stage: the command's wall seconds, and what the stage reports about itself:
the index its report.json's seconds per part, SASRec its training seconds and chosen epoch, SFT its
train_summary.json (training seconds, tokens/s, the epoch validation chose). With `--repeats N` the
stages run N times in turn (OUT/rep0, rep1, ...), so SASRec and SFT are interleaved on the same
machine state; each stage's record is its median run (by training time) with every run beside it.

    python benchmarks/stage_time.py configs/demo.yaml index sasrec sft --repeats 3 --out /tmp/demo_time
    python benchmarks/stage_time.py configs/demo.yaml index --out /tmp/flexcode_time --name stage_time_flexcode \\
        --set index.scheme=flexcode --set index.collaborative.weight=0
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO))
from benchmarks.results import record, spec_data  # noqa: E402
from cluster.run_layout import RunLayout  # noqa: E402

STAGES = ("index", "sasrec", "sft")


def own_timings(run_dir: Path, stage: str) -> dict:
    """What the stage wrote about its own time."""
    layout = RunLayout(run_dir)
    if stage == "index":
        report = json.loads((layout.stage("index") / "report.json").read_text())
        return {"seconds": report["seconds"], "items": report["items"]}
    if stage == "sasrec":
        meta = json.loads(layout.eval_file("sasrec").read_text())["meta"]
        return {"train_secs": meta["train_secs"], "best_epoch": meta["best_epoch"]}
    summary = json.loads(layout.train_summary.read_text())
    return {key: summary.get(key) for key in ("train_secs", "tokens_per_s", "selection", "micro_steps")}


def stage_command(spec: Path, stage: str, run_dir: Path, sets: list[str]) -> list[str]:
    overrides = ["--set", f"run_dir={run_dir}", *[x for kv in sets for x in ("--set", kv)]]
    if stage != "sasrec":
        return [sys.executable, "-m", "gream.cli", stage, str(spec), *overrides]
    from cluster.spec import load_spec

    section = load_spec(spec, sets).sasrec
    settings = [] if section.config is None else ["--config", section.config]
    return [sys.executable, "-m", "gream.cli", "baseline", "sasrec", str(spec), *overrides, *settings,
            "--seed", str(section.seed)]


def median_run(runs: list[dict]) -> dict:
    """The run with the median training time (the wall time where the stage reports none), every run beside it."""
    key = [r.get("train_secs") or r["wall_s"] for r in runs]
    return {**runs[sorted(range(len(runs)), key=key.__getitem__)[len(runs) // 2]], "runs": runs}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", type=Path)
    ap.add_argument("stages", nargs="+", choices=STAGES)
    ap.add_argument("--out", type=Path, required=True, help="a run folder that does not hold these stages yet")
    ap.add_argument("--repeats", type=int, default=1, help="run the stages this many times in turn (OUT/rep<k>)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="spec override for every stage")
    ap.add_argument("--name", help="the results file (default stage_time_<spec name>)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    folders = [args.out] if args.repeats == 1 else [args.out / f"rep{k}" for k in range(args.repeats)]
    held = sorted({s for f in folders for s in args.stages if RunLayout(f).stage(s).exists()})
    if held:
        ap.error(f"{args.out} already holds {', '.join(held)}: a cached stage would be timed; choose a new --out")
    runs: dict[str, list[dict]] = {stage: [] for stage in args.stages}
    for folder in folders:
        for stage in args.stages:
            start = time.perf_counter()
            done = subprocess.run(stage_command(args.spec, stage, folder, args.set), cwd=REPO, capture_output=True,
                                  text=True)
            wall = time.perf_counter() - start
            if done.returncode:
                print(done.stderr[-3000:], file=sys.stderr)
                return done.returncode
            runs[stage].append({"wall_s": wall, **own_timings(folder, stage)})
            print(f"{folder.name} {stage}: {wall:.1f} s wall; {json.dumps(runs[stage][-1], default=str)}", flush=True)
    figures = {stage: runs[stage][0] if args.repeats == 1 else median_run(runs[stage]) for stage in args.stages}
    if {"sasrec", "sft"} <= set(args.stages):
        figures["sft_over_sasrec"] = [a["train_secs"] / b["train_secs"] for a, b in zip(runs["sft"], runs["sasrec"])]
    model = RunLayout(folders[0]).model("sft") if "sft" in args.stages else None
    record(args.name or f"stage_time_{args.spec.stem}", figures, script=__file__, argv=argv, model=model,
           data=spec_data(args.spec, args.set), settings={"set": args.set, "repeats": args.repeats})
    return 0


if __name__ == "__main__":
    sys.exit(main())
