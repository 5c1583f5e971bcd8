"""Scaling on one machine: rollout throughput with 1 and 2 rollout workers, learner step time with 1
and 2 DeepSpeed ranks, and (`--project`) the per-phase split of a finished RL run.

Rollout: the same `--prompts` training prompts (the RL prompt stream of the spec's split) x n
completions, direct mode, trie-constrained, at the RL temperature and length, through
`RolloutPool.generate`, exactly what the RL driver calls. One pool of 2 workers (Ray actors, each
with its own vLLM-CPU engine) serves both sides: the 1-worker side sends everything to the first
worker, the 2-worker side shards over both, and the two alternate `--repeats` times (medians).
Each engine binds cores of its own (the pool's per-node slot, `rl_system.rollout.engine.cpu_bind_list`);
the binding of every engine process is printed.

Learner: one batch built from those rollouts (rewards from `rl_system.reward.functions`, advantages from
`rl.advantage`, every group kept), one `LearnerGroup` of 1 rank and one of 2 ranks (DeepSpeed,
gloo on CPU, ZeRO stage `rl.zero_stage`) with the same `--learner-cores` CPUs in all (the one rank
all of them, each of two ranks half), `train_step` on that batch alternating `--repeats` times after
a warm-up step each (medians, [min, max], per-repeat ratios).

Projection input: `--project RUN_OR_METRICS` reads a run's `rl/metrics.jsonl` and prints each
phase's (time/rollout, time/reward, time/train, time/push) median and share of the step time.

    python benchmarks/scaling.py --prompts 64 --n 8 --repeats 3
    python benchmarks/scaling.py --project runs/demo
"""
from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/scaling.py` puts benchmarks/, not the repo, on the path
    sys.path.insert(0, str(REPO))

from benchmarks.beam_eval import add_model_args, engine_binding, missing_model_inputs  # noqa: E402
from benchmarks.results import record  # noqa: E402
from cluster.run_layout import METRICS_FILE, RunLayout  # noqa: E402

SIDES = (1, 2)
PHASES = ("rollout", "reward", "train", "push")


# --------------------------------------------------------------------------- --project (no Ray, no torch)
def metrics_path(path: str | Path) -> Path:
    """A run directory, its rl/ folder or the metrics.jsonl itself -> the metrics file."""
    path = Path(path)
    for candidate in (path, path / METRICS_FILE, RunLayout(path).metrics("rl")):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{path}: no rl/metrics.jsonl here (give a run_dir, its rl/ folder or the file)")


def last_run(records: list[dict]) -> list[dict]:
    """The records of the last run in a file: a step number that does not increase starts a new run
    (files written before fresh runs truncated them hold several runs one after the other)."""
    start = 0
    for i in range(1, len(records)):
        if records[i]["step"] <= records[i - 1]["step"]:
            start = i
    return records[start:]


def phase_shares(records: list[dict], skip: int = 0) -> dict:
    """Per phase: median and mean seconds per step, total seconds and share of the summed step time
    (`time/step`), over the steps after the first `skip`. "other" is the step time no phase covers
    (logging, status, checkpoints)."""
    rows = [r for r in records if r["step"] > skip and isinstance(r.get("time/step"), (int, float))]
    if not rows:
        raise ValueError(f"no steps with time/step after skipping the first {skip}")
    step_total = sum(r["time/step"] for r in rows)
    per_phase = {p: [float(r.get(f"time/{p}") or 0.0) for r in rows] for p in PHASES}
    per_phase["other"] = [r["time/step"] - sum(per_phase[p][i] for p in PHASES) for i, r in enumerate(rows)]
    out = {name: {"median_s": statistics.median(v), "mean_s": statistics.fmean(v), "total_s": sum(v),
                  "share": sum(v) / step_total if step_total else 0.0} for name, v in per_phase.items()}
    steps = [r["time/step"] for r in rows]
    out["step"] = {"median_s": statistics.median(steps), "mean_s": statistics.fmean(steps), "total_s": step_total,
                   "share": 1.0}
    extras = {}
    for key in ("sampling_rounds", "completions", "throughput/rollout_tokens_per_s", "push/bytes"):
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if values:
            extras[key] = statistics.fmean(values)
    return {"steps": len(rows), "first_step": rows[0]["step"], "last_step": rows[-1]["step"], "phases": out,
            "means": extras}


def format_shares(result: dict, source: str = "") -> str:
    lines = [f"RL step split{' of ' + source if source else ''}: steps {result['first_step']}-{result['last_step']} "
             f"({result['steps']} steps)",
             f"{'phase':<9}{'median s':>10}{'mean s':>10}{'total s':>10}{'share':>8}"]
    for name, row in result["phases"].items():
        lines.append(f"{name:<9}{row['median_s']:>10.3f}{row['mean_s']:>10.3f}{row['total_s']:>10.1f}"
                     f"{row['share']:>8.1%}")
    if result["means"]:
        lines.append("per-step means: " + ", ".join(f"{k} {v:.1f}" for k, v in result["means"].items()))
    return "\n".join(lines)


def project(path: str | Path, skip: int) -> tuple[str, dict]:
    """The split printed, and as figures."""
    from gream.run_state import read_jsonl

    source = metrics_path(path)
    records = read_jsonl(source)
    run = last_run(records)
    earlier = len(records) - len(run)
    note = f" (the last run in the file; {earlier} earlier records ignored)" if earlier else ""
    shares = phase_shares(run, skip)
    return format_shares(shares, f"{source}{note}"), {**shares, "source": str(source)}


# --------------------------------------------------------------------------- tables for the measurements
def scaling_table(title: str, unit: str, seconds: dict[int, list[float]], work: float, label: str) -> str:
    """One row per side (1, 2): median seconds, `work / median` in `unit`, and the 2/1 ratio of that
    rate with its per-repeat values (same repeat index on both sides)."""
    lines = [title, f"{label:<8}{'median s':>10}{'[min, max] s':>18}{unit:>16}{'speedup':>9}"]
    rate = {k: work / statistics.median(v) for k, v in seconds.items()}
    for k, v in seconds.items():
        spread = f"[{min(v):.3f}, {max(v):.3f}]"
        lines.append(f"{k:<8}{statistics.median(v):>10.3f}{spread:>18}{rate[k]:>16.1f}{rate[k] / rate[1]:>8.2f}x")
    runs = ", ".join(f"{a / b:.2f}" for a, b in zip(seconds[1], seconds[2]))
    lines.append(f"ratio {label} 2 / 1: {rate[2] / rate[1]:.2f}x (per repeat: {runs})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- measurements (Ray, vLLM, DeepSpeed)
def single_worker_view(pool):
    """The pool restricted to its first worker: `generate` then sends every prompt to that worker."""
    view = copy.copy(pool)
    view.slots = pool.slots[:1]
    return view


def scored_batch(spec, index, prompts, groups):
    """The learner's input for these rollouts: residual rewards, `rl.advantage`, every group kept."""
    import numpy as np

    from rl_system.groups import train_batch
    from rl_system.messages import ScoredGroup
    from rl_system.reward import functions as rewards

    texts = [c.text for g in groups for c in g.completions]
    targets = np.array([p.target_codes for p, g in zip(prompts, groups) for _ in g.completions])
    reply = rewards.score(rewards.parse_completions(texts, "direct", index.depth), targets,
                          rewards.semantic_levels(index.as_array()), spec.rl.beta)
    n = spec.rl.group_size
    scored = [ScoredGroup(p, g, reply.residual[i * n:(i + 1) * n], reply.exact[i * n:(i + 1) * n],
                          reply.lcp[i * n:(i + 1) * n], reply.format_ok[i * n:(i + 1) * n])
              for i, (p, g) in enumerate(zip(prompts, groups))]
    return train_batch(scored, spec.rl.advantage, spec.rl.passk_k), float(reply.residual.mean())


def measure_rollout(spec, model: Path, index, prompts, repeats: int):
    from rl_system.rollout.pool import RolloutPool

    rl = spec.rl
    pool = RolloutPool.from_spec(spec, model, index, num_workers=max(SIDES))
    try:
        views = {1: single_worker_view(pool), 2: pool}
        texts = [p.text for p in prompts]

        def run(k: int):
            start = time.perf_counter()
            groups = views[k].generate(texts, n=rl.group_size, temperature=rl.temperature,
                                       max_tokens=rl.max_new_tokens, mode="direct")
            return time.perf_counter() - start, groups

        for k in SIDES:  # warm-up: first-call allocations on every engine
            run(k)
        bound = [engine_binding(w) for w in pool.workers]
        seconds: dict[int, list[float]] = {k: [] for k in SIDES}
        for rep in range(repeats):
            for k in SIDES:
                elapsed, groups = run(k)
                seconds[k].append(elapsed)
            print(f"rollout run {rep + 1}/{repeats}: " + ", ".join(f"{k} worker(s) {seconds[k][-1]:.2f} s"
                                                                   for k in SIDES), flush=True)
        tokens = sum(len(c.token_ids) for g in groups for c in g.completions)
        return seconds, groups, tokens, bound
    finally:
        pool.shutdown()


def measure_learner(spec, model: Path, batch, repeats: int, cores: int):
    """Each side gets `cores` CPUs in all: a rank `cores / ranks` (Ray sets its OMP_NUM_THREADS)."""
    import ray

    from cluster.placement import ranks_group
    from rl_system.learner.group import LearnerGroup

    learners, groups = {}, []
    try:
        for ranks in SIDES:
            spec.cluster.learner.num_ranks = ranks
            spec.cluster.learner.cpus_per_rank = max(1, cores // ranks)
            groups.append(ranks_group(spec.name, "learner", spec.cluster.learner))
            learners[ranks] = LearnerGroup.from_spec(spec, model, groups[-1])
        threads = {k: ray.get([a.__ray_call__.remote(lambda self: __import__("torch").get_num_threads())
                               for a in g.actors]) for k, g in learners.items()}
        for g in learners.values():  # warm-up: DeepSpeed's first step builds optimizer state
            g.train_step(batch)
        seconds: dict[int, list[float]] = {k: [] for k in SIDES}
        for rep in range(repeats):
            for k, g in learners.items():
                start = time.perf_counter()
                g.train_step(batch)
                seconds[k].append(time.perf_counter() - start)
            print(f"learner run {rep + 1}/{repeats}: " + ", ".join(f"{k} rank(s) {seconds[k][-1]:.2f} s"
                                                                   for k in SIDES), flush=True)
        return seconds, threads
    finally:
        for g in learners.values():
            g.shutdown()
        for pg in groups:
            pg.remove()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", metavar="RUN",
                    help="print the per-phase step split of RUN's rl/metrics.jsonl (or that file) and exit")
    ap.add_argument("--skip", type=int, default=1,
                    help="with --project: leave out the first N steps (engine warm-up; default 1)")
    add_model_args(ap)
    ap.add_argument("--spec", type=Path, default=REPO / "configs/demo.yaml", help="data, RL and engine settings")
    ap.add_argument("--prompts", type=int, default=64, help="training prompts per generate call / learner batch")
    ap.add_argument("--n", type=int, default=8, help="completions per prompt (rl.group_size)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-learner", action="store_true", help="rollout side only")
    ap.add_argument("--learner-cores", type=int, default=os.cpu_count() or 1,
                    help="CPUs each learner side gets in all (1 rank: all of them; 2 ranks: half each)")
    args = ap.parse_args(argv)

    if args.project:
        text, shares = project(args.project, args.skip)
        print(text)
        record("rl_phases", shares, script=__file__, argv=argv, settings={"skip": args.skip})
        return 0
    if problem := missing_model_inputs(args):
        print(problem, file=sys.stderr)
        return 2
    if args.repeats < 1 or args.prompts < 2:
        ap.error("--repeats must be >= 1 and --prompts >= 2 (2 learner ranks need a row each)")

    from transformers import AutoTokenizer

    from cluster.placement import init_ray
    from cluster.spec import load_spec
    from indexing.dataset import split_from_spec
    from indexing.sid import SidIndex
    from rl_system.prompt_source import PromptSource

    base = load_spec(args.spec)
    data = Path(base.data.path)
    run_dir = tempfile.mkdtemp(prefix="scaling_")  # nothing of this benchmark lands in the spec's run_dir
    spec = load_spec(args.spec, [f"run_dir={run_dir}", f"data.path={data if data.is_absolute() else REPO / data}",
                                 f"rl.group_size={args.n}", f"rl.prompts_per_step={args.prompts}",
                                 f"rl.passk_k={min(base.rl.passk_k, args.n)}",
                                 f"cluster.rollout.num_workers={max(SIDES)}", f"cluster.learner.num_ranks={max(SIDES)}",
                                 f"cluster.num_cpus={2 * max(SIDES) + 2 * args.learner_cores + 2}"])
    index = SidIndex.load(args.index)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prompts = PromptSource(split_from_spec(spec).train, index, tokenizer, spec.rl.seed).next(args.prompts)
    init_ray(spec.cluster)
    try:
        roll_s, groups, tokens, bound = measure_rollout(spec, args.model, index, prompts, args.repeats)
        batch, reward = scored_batch(spec, index, prompts, groups)
        learn_s, threads = (None, None) if args.skip_learner else measure_learner(
            spec, args.model, batch, args.repeats, args.learner_cores)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)

    completions = args.prompts * args.n
    print(f"\nmodel {args.model}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end; "
          f"median of {args.repeats} runs, sides alternating")
    for i, b in enumerate(bound):
        print(f"rollout worker {i}: {b}")
    print(scaling_table(f"\nrollout: {args.prompts} prompts x n={args.n} = {completions} completions, direct, "
                        f"trie-constrained, temperature {spec.rl.temperature}, <= {spec.rl.max_new_tokens} tokens "
                        f"({tokens} tokens in the last run)", "completions/s", roll_s, completions, "workers"))
    if learn_s is not None:
        print(scaling_table(f"\nlearner: one batch of {len(batch)} completions ({batch.num_tokens()} tokens, "
                            f"mean reward {reward:.4f}), {spec.rl.advantage}, ZeRO-{spec.rl.zero_stage}, "
                            f"micro-batch {spec.rl.micro_batch_size}, gloo; torch threads per rank {threads}",
                            "completions/s", learn_s, len(batch), "ranks"))
        step = {k: statistics.median(v) for k, v in learn_s.items()}
        print(f"learner step time 1 rank / 2 ranks: {step[1] / step[2]:.2f}x")
    record("scaling", {"rollout": sides(roll_s, completions),
                       "learner": None if learn_s is None else sides(learn_s, len(batch))},
           script=__file__, argv=argv, model=args.model, data=spec.data.path,
           settings={"prompts": args.prompts, "n": args.n, "repeats": args.repeats,
                     "learner_cores": args.learner_cores, "threads_per_rank": threads, "workers": bound})
    return 0


def sides(seconds: dict[int, list[float]], work: int) -> dict:
    """Per side (1 or 2 workers or ranks): median seconds, [min, max], completions/s and each repeat."""
    return {str(k): {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "runs_s": v,
                     "completions_per_s": work / statistics.median(v)} for k, v in seconds.items()}


if __name__ == "__main__":
    sys.exit(main())
