"""What RL's in-run validation costs: the share of an RL run's wall time spent validating.

From one SFT run folder (`index/`, `model/`, `sft/model/`, the demo's by default), `gream rl SPEC`
runs `--repeats` times in a run folder of its own with `rl.eval_users: all` (every validation user)
and the spec's `rl.eval_every`, each time alone in a fresh process (Ray, vLLM and DeepSpeed start
included in the wall time). Printed per run: the wall seconds of the command, the validations'
seconds (`time/validate` in rl/metrics.jsonl) and their share; then the median share and the spread.

    python benchmarks/validation_cost.py --base runs/demo --out runs/validation_cost --repeats 3
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

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from benchmarks.results import record  # noqa: E402

LINKED = ("index", "model", "sft")


def validation_seconds(metrics: Path) -> list[float]:
    """`time/validate` of every validated step in an RL metrics log."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [r["time/validate"] for r in rows if r.get("time/validate") is not None]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=REPO / "configs/demo.yaml")
    ap.add_argument("--base", type=Path, default=REPO / "runs/demo", help="the SFT run folder RL starts from")
    ap.add_argument("--out", type=Path, default=REPO / "runs/validation_cost")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], help="more spec overrides, KEY=VALUE")
    args = ap.parse_args()
    if not (args.base / "sft/model/config.json").exists():
        print(f"no SFT model under {args.base}: run `gream index SPEC && gream sft SPEC` first", file=sys.stderr)
        return 2
    gream = Path(sys.executable).with_name("gream")
    shares, walls, totals, runs = [], [], [], []
    for rep in range(args.repeats):
        run_dir = args.out / f"run{rep}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        for name in LINKED:
            (run_dir / name).symlink_to((args.base / name).resolve(), target_is_directory=True)
        load = os.getloadavg()[0]
        start = time.perf_counter()
        subprocess.run([str(gream), "rl", str(args.spec), "--set", f"run_dir={run_dir}", "--set", "rl.eval_users=all",
                        *[x for kv in args.set for x in ("--set", kv)]], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        seconds = validation_seconds(run_dir / "rl/metrics.jsonl")
        shares.append(sum(seconds) / wall)
        walls.append(wall)
        totals.append(sum(seconds))
        runs.append({"load_before": round(load, 2), "wall_s": wall, "validations_s": seconds, "share": shares[-1]})
        print(f"run {rep + 1}/{args.repeats}: load {load:.1f} before; wall {wall:.1f} s; {len(seconds)} validations "
              f"{', '.join(f'{s:.2f}' for s in seconds)} s = {sum(seconds):.1f} s, {shares[-1]:.1%} of the run", flush=True)
    print(f"median share {statistics.median(shares):.1%} [{min(shares):.1%}, {max(shares):.1%}]; median wall "
          f"{statistics.median(walls):.1f} s, validation {statistics.median(totals):.1f} s")
    record("validation_cost", {"runs": runs, "share": {"median": statistics.median(shares), "min": min(shares),
                                                        "max": max(shares)},
                               "wall_s": statistics.median(walls), "validation_s": statistics.median(totals)},
           script=__file__, model=args.base / "sft/model", settings={"spec": str(args.spec), "set": args.set})
    return 0


if __name__ == "__main__":
    sys.exit(main())
