"""Where an SFT step's time goes: the demo spec's training step, taken apart on the trainer's own
batches (sft/trainer.py), in one process and alone.

The trainer is built as `gream sft` builds it, from a run folder that already holds the index (and
the SASRec that `sft.distill.path` names, if any); nothing is written there. After `--warmup` steps,
`--steps` steps are timed by phase (collate, teacher targets, forward with the loss, backward,
optimizer step), then a few more run under torch's profiler for the operators' share of the time.

    python benchmarks/sft_profile.py configs/demo.yaml --run-dir runs/stage_time/rep0
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO))
from benchmarks.results import record, spec_data  # noqa: E402

PHASES = ("collate", "teacher", "forward", "backward", "step")
TOP_OPS = 6


def op_shares(events, top: int = TOP_OPS) -> dict[str, float]:
    """The `top` operators' shares of the profiled self time (events: profiler key averages)."""
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {e.key: e.self_cpu_time_total / total for e in ranked}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", type=Path)
    ap.add_argument("--run-dir", type=Path, required=True, help="a run folder holding the index (and the teacher)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--profiled", type=int, default=20, help="steps under torch's profiler")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--name", default="sft_profile")
    args = ap.parse_args(argv)
    import torch
    from torch.profiler import ProfilerActivity, profile

    from cluster.spec import load_spec
    from sft.batches import collate, make_batches, token_loss
    from sft.trainer import Trainer

    sets = [f"run_dir={args.run_dir}", *args.set]
    spec = load_spec(args.spec, sets)
    trainer = Trainer(spec)
    s = spec.sft
    need = args.warmup + args.steps + args.profiled
    engine = trainer._engine(trainer.model, [p for p in trainer.model.parameters() if p.requires_grad], need, s.lr,
                             s.weight_decay, s.zero_stage)
    engine.train()
    batches = []
    while len(batches) < need:
        batches += make_batches(trainer.align, s.batch_size, random.Random(len(batches)))
    pad = trainer.tok.pad_token_id

    def step(examples, clock: dict[str, float] | None = None) -> None:
        marks = [time.perf_counter()]
        batch = collate(examples, pad)
        marks.append(time.perf_counter())
        teacher = None if trainer.distiller is None else trainer.distiller.targets(examples, batch.targets)
        marks.append(time.perf_counter())
        loss = token_loss(engine, batch, trainer.device, trainer.amp_dtype, trainer.objective, teacher)
        marks.append(time.perf_counter())
        engine.backward(loss)
        marks.append(time.perf_counter())
        engine.step()
        marks.append(time.perf_counter())
        if clock is not None:
            for name, a, b in zip(PHASES, marks, marks[1:]):
                clock[name] += b - a

    for examples in batches[:args.warmup]:
        step(examples)
    clock = dict.fromkeys(PHASES, 0.0)
    timed = batches[args.warmup:args.warmup + args.steps]
    for examples in timed:
        step(examples, clock)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for examples in batches[args.warmup + args.steps:need]:
            step(examples)
    ms = {k: v / args.steps * 1e3 for k, v in clock.items()}
    figures = {"command": f"gream sft {args.spec}" + "".join(f" --set {kv}" for kv in args.set),
               "steps": args.steps, "batch": s.batch_size,
               "tokens": sum(len(e.input_ids) for b in timed for e in b) / len(timed),
               "ms": ms, "total_ms": sum(ms.values()), "ops": op_shares(prof.key_averages()),
               "threads": torch.get_num_threads()}
    print(figures)
    record(args.name, figures, script=__file__, argv=argv, data=spec_data(args.spec, sets), settings={"set": sets})
    return 0


if __name__ == "__main__":
    sys.exit(main())
