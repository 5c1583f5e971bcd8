"""Constrained vs unconstrained generation on one vLLM engine: what the trie logits processor costs.

Both sides run on the same engine, the same prompts (Office next-item prompts), the same n and the
same length: `ignore_eos` makes every completion exactly `--tokens` long, so the only difference is
the processor's per-step work (absorbing last step's tokens, one batched mask). Runs alternate
constrained / unconstrained `--repeats` times; medians and the ratio are printed. On a shared
machine the end-to-end ratio is noisy, so the processor's own per-step cost is also timed alone.

    python benchmarks/rollout.py --hidden 256 --layers 4 --prompts 64 --n 8 --tokens 7
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO))
from benchmarks.results import record  # noqa: E402


def processor_step_seconds(constraint_path: Path, vocab_size: int, rows: int, repeats: int) -> float:
    """Median seconds of one V1 `apply` (absorb last tokens + mask) for `rows` direct-mode rows that
    walk real SIDs, outside the engine: the processor's own cost with no scheduling noise."""
    import random
    from types import SimpleNamespace

    import torch
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    from rl_system.rollout.constraint import CONFIG_KEY, EXTRA_ARGS_KEY, ConstraintTable
    from rl_system.rollout.vllm_processors import TrieLogitsProcessor

    table = ConstraintTable.load(constraint_path)
    config = SimpleNamespace(additional_config={CONFIG_KEY: str(constraint_path)},
                             scheduler_config=SimpleNamespace(max_num_seqs=rows),
                             model_config=SimpleNamespace(get_vocab_size=lambda: vocab_size))
    rng = random.Random(0)
    times = []
    for _ in range(repeats):
        proc = TrieLogitsProcessor(config, torch.device("cpu"), False)
        outputs = [[] for _ in range(rows)]
        params = SamplingParams(extra_args={EXTRA_ARGS_KEY: "direct"})
        proc.update_state(BatchUpdate(batch_size=rows, removed=[], moved=[],
                                      added=[(i, params, [], outputs[i]) for i in range(rows)]))
        sids = [rng.choice(table.sids) + [table.eos_id] for _ in range(rows)]
        for t in range(len(sids[0])):
            logits = torch.randn(rows, vocab_size)
            start = time.perf_counter()
            proc.apply(logits)
            times.append(time.perf_counter() - start)
            for out, sid in zip(outputs, sids):
                out.append(sid[t])
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF folder with SID tokens (default: build an untrained embedded policy)")
    ap.add_argument("--constraint", help="ConstraintTable JSON for --model")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--tokens", type=int, nargs="+", default=[7, 32])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from transformers import AutoTokenizer
    from vllm import SamplingParams

    from cluster.device import resolve
    from cluster.spec import JobSpec
    from indexing.dataset import load_dataset
    from indexing.importer import import_index
    from rl_system.rollout.constraint import EXTRA_ARGS_KEY
    from rl_system.rollout.engine import EngineConfig, untrained_sid_policy
    from rl_system.rollout.worker import RolloutWorker
    from sft.prompts import render_seqrec_prompt

    index = import_index(REPO / "data/office/Office.unitok5.index.json").index
    if args.model:
        model_dir, constraint = Path(args.model), Path(args.constraint)
    else:
        spec = JobSpec(name="bench", run_dir=tempfile.mkdtemp(), data={"path": str(REPO / "data/office")},
                       model={"hidden_size": args.hidden, "num_layers": args.layers, "num_heads": max(1, args.hidden // 64)})
        model_dir, constraint = untrained_sid_policy(spec, index, spec.run_path)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ds = load_dataset(REPO / "data/office", "Office")
    users = sorted(ds.sequences)[: args.prompts]
    prompts = [render_seqrec_prompt(tokenizer, [index.text(i) for i in ds.sequences[u][-11:-1]]) for u in users]

    from transformers import AutoConfig

    vocab_size = AutoConfig.from_pretrained(model_dir).vocab_size
    step = processor_step_seconds(Path(constraint), vocab_size, args.prompts * args.n, args.repeats)
    cfg = EngineConfig(model=str(model_dir), constraint_path=str(constraint), placement=resolve("auto"),
                       dtype=args.dtype, max_model_len=512, max_num_seqs=args.prompts * args.n)
    llm = RolloutWorker(cfg).llm

    def run(tokens: int, constrained: bool) -> float:
        params = SamplingParams(n=args.n, temperature=1.0, max_tokens=tokens, ignore_eos=True, detokenize=False,
                                logprobs=0, extra_args={EXTRA_ARGS_KEY: "direct"} if constrained else None)
        start = time.perf_counter()
        out = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        assert all(len(c.token_ids) == tokens for o in out for c in o.outputs)
        return elapsed

    run(args.tokens[0], True)  # warm-up: first-call compilation and caches
    run(args.tokens[0], False)
    print(f"\nmodel hidden={args.hidden} layers={args.layers} dtype={args.dtype} device={cfg.placement.device_type}; "
          f"{args.prompts} prompts x n={args.n}; median of {args.repeats} runs")
    print(f"{'tokens':>7} {'unconstrained s':>16} {'constrained s':>14} {'ratio':>7} {'tok/s constrained':>18}")
    rows = []
    for tokens in args.tokens:
        times = {True: [], False: []}
        for _ in range(args.repeats):
            for constrained in (False, True):
                times[constrained].append(run(tokens, constrained))
        free, cons = statistics.median(times[False]), statistics.median(times[True])
        total = args.prompts * args.n * tokens
        print(f"{tokens:>7} {free:>16.3f} {cons:>14.3f} {cons / free:>7.3f} {total / cons:>18.0f}")
        rows.append({"tokens": tokens, "unconstrained_s": free, "constrained_s": cons, "ratio": cons / free,
                     "runs_unconstrained_s": times[False], "runs_constrained_s": times[True]})
    per_step = free / max(args.tokens)
    print(f"processor alone: {step * 1e3:.2f} ms per step for {args.prompts * args.n} rows x {vocab_size} tokens "
          f"= {step / per_step:.1%} of an unconstrained step ({per_step * 1e3:.0f} ms at {max(args.tokens)} tokens)")
    record("rollout", {"lengths": rows, "processor_ms_per_step": step * 1e3, "processor_share": step / per_step},
           script=__file__, model=model_dir, data=REPO / "data/office",
           settings={"prompts": args.prompts, "n": args.n, "repeats": args.repeats, "dtype": args.dtype,
                     "device": cfg.placement.device_type, "vocab": vocab_size})


if __name__ == "__main__":
    main()
