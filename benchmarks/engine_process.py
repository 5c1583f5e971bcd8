"""A CPU rollout engine in its owning process against vLLM's own processes: start time and rollout speed.

Each side runs in a fresh Python process (vLLM reads the choice from the environment once), the two
sides alternating `--repeats` times on the same policy, prompts, group size and lengths. A child
times `RolloutWorker(cfg)` (the engine's start) and then RL's rollout call (`generate`: trie-constrained
groups of `--n`, per-prompt seeds) and a beam of `--width`, each after a warm-up.

    python benchmarks/engine_process.py --repeats 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.results import record  # noqa: E402

MARK = "engine_process: "  # the child's result line among vLLM's own output


def child(args) -> dict:
    from transformers import AutoTokenizer

    from cluster.device import resolve
    from indexing.dataset import load_dataset
    from indexing.importer import import_index
    from rl_system.rollout.engine import EngineConfig
    from rl_system.rollout.worker import RolloutWorker
    from sft.prompts import render_seqrec_prompt

    index = import_index(REPO / "data/office/Office.unitok5.index.json").index
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    ds = load_dataset(REPO / "data/office", "Office")
    users = sorted(ds.sequences)[: args.prompts]
    prompts = [tokenizer.encode(render_seqrec_prompt(tokenizer, [index.text(i) for i in ds.sequences[u][-11:-1]]))
               for u in users]
    cfg = EngineConfig(model=args.model, constraint_path=args.constraint, placement=resolve("cpu"),
                       max_model_len=512, max_num_seqs=args.prompts * args.n, in_process=args.in_process == 1)
    start = time.perf_counter()
    worker = RolloutWorker(cfg)
    started = time.perf_counter() - start

    def timed(call) -> float:
        call()  # warm-up
        t = time.perf_counter()
        call()
        return time.perf_counter() - t

    seeds = list(range(len(prompts)))
    return {"in_process": cfg.runs_in_process, "start_s": started,
            "generate_s": timed(lambda: worker.generate(prompts, n=args.n, max_tokens=8, seeds=seeds)),
            "beam_s": timed(lambda: worker.beam(prompts, args.width))}


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--width", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--in-process", type=int, choices=(0, 1), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--constraint", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(MARK + json.dumps(child(args)), flush=True)
        return

    from cluster.spec import JobSpec
    from indexing.importer import import_index
    from rl_system.rollout.engine import untrained_sid_policy

    root = Path(tempfile.mkdtemp())
    spec = JobSpec(name="bench", run_dir=str(root), data={"path": str(REPO / "data/office")},
                   model={"hidden_size": args.hidden, "num_layers": args.layers, "num_heads": max(1, args.hidden // 64)})
    model, constraint = untrained_sid_policy(spec, import_index(REPO / "data/office/Office.unitok5.index.json").index, root)
    rows: dict[int, list[dict]] = {0: [], 1: []}
    for _ in range(args.repeats):
        for side in (0, 1):
            cmd = [sys.executable, __file__, "--child", "--in-process", str(side), "--model", str(model),
                   "--constraint", str(constraint), "--prompts", str(args.prompts), "--n", str(args.n),
                   "--width", str(args.width)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows[side].append(json.loads(next(x for x in out.splitlines() if x.startswith(MARK))[len(MARK):]))
    print(f"\nhidden={args.hidden} layers={args.layers}; {args.prompts} prompts, groups of {args.n}, beam width "
          f"{args.width}; median (min-max) of {args.repeats} alternating runs, seconds")
    print(f"{'engine':<22} {'start':>18} {'generate':>18} {'beam':>18}")
    sides = {}
    for side, name in ((0, "vLLM's processes"), (1, "in the owning process")):
        r = rows[side]
        print(f"{name:<22} {spread([x['start_s'] for x in r]):>18} {spread([x['generate_s'] for x in r]):>18} "
              f"{spread([x['beam_s'] for x in r]):>18}")
        sides[name] = {key: summary([x[key] for x in r]) for key in ("start_s", "generate_s", "beam_s")}
    record("engine_process", {"sides": sides}, script=__file__, data=REPO / "data/office",
           settings={"hidden": args.hidden, "layers": args.layers, "prompts": args.prompts, "n": args.n,
                     "width": args.width, "repeats": args.repeats})


if __name__ == "__main__":
    main()
