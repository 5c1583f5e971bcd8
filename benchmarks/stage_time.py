"""Wall time of gream stages on a spec, each in a fresh process, beside the stage's own timings.

`gream STAGE SPEC --set run_dir=OUT` runs for each stage in order (index before sft: SFT reads the
index), in a run folder that must not hold them yet, so nothing is cached (the index's embeddings
included). Printed and recorded per stage: the command's wall seconds, and what the stage reports
about itself: the index its report.json's seconds per part, SFT its train_summary.json (training
seconds, tokens/s, the epoch validation chose).

    python benchmarks/stage_time.py configs/demo.yaml index sft --out /tmp/demo_time
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

STAGES = ("index", "sft")


def own_timings(run_dir: Path, stage: str) -> dict:
    """What the stage wrote about its own time."""
    layout = RunLayout(run_dir)
    if stage == "index":
        report = json.loads((layout.stage("index") / "report.json").read_text())
        return {"seconds": report["seconds"], "items": report["items"]}
    summary = json.loads(layout.train_summary.read_text())
    return {key: summary.get(key) for key in ("train_secs", "tokens_per_s", "selection", "micro_steps")}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", type=Path)
    ap.add_argument("stages", nargs="+", choices=STAGES)
    ap.add_argument("--out", type=Path, required=True, help="a run folder that does not hold these stages yet")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="spec override for every stage")
    ap.add_argument("--name", help="the results file (default stage_time_<spec name>)")
    args = ap.parse_args(argv)
    held = [s for s in args.stages if RunLayout(args.out).stage(s).exists()]
    if held:
        ap.error(f"{args.out} already holds {', '.join(held)}: a cached stage would be timed; choose a new --out")
    figures = {}
    for stage in args.stages:
        cmd = [sys.executable, "-m", "gream.cli", stage, str(args.spec), "--set", f"run_dir={args.out}",
               *[x for kv in args.set for x in ("--set", kv)]]
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        figures[stage] = {"wall_s": wall, **own_timings(args.out, stage)}
        print(f"{stage}: {wall:.1f} s wall; {json.dumps(figures[stage], default=str)}", flush=True)
    model = RunLayout(args.out).model("sft") if "sft" in args.stages else None
    record(args.name or f"stage_time_{args.spec.stem}", figures, script=__file__, argv=argv, model=model,
           data=spec_data(args.spec, args.set), settings={"set": args.set})
    return 0


if __name__ == "__main__":
    sys.exit(main())
