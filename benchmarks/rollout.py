"""Constrained vs unconstrained generation on one vLLM engine: what the trie logits processor costs.

Both sides run on the same engine, the same prompts (Office next-item prompts), the same n and the
same length: `ignore_eos` makes every completion exactly `--tokens` long, so the only difference is
the processor's per-step work (absorbing last step's tokens, one batched mask). Runs alternate
constrained / unconstrained `--repeats` times; medians and the ratio are printed.

    python benchmarks/rollout.py --hidden 256 --layers 4 --prompts 64 --n 8 --tokens 7
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
    from rl_system.logits_processor import EXTRA_ARGS_KEY
    from rl_system.rollout_worker import RolloutWorker
    from rl_system.vllm_engine import EngineConfig, untrained_sid_policy
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
    for tokens in args.tokens:
        times = {True: [], False: []}
        for _ in range(args.repeats):
            for constrained in (False, True):
                times[constrained].append(run(tokens, constrained))
        free, cons = statistics.median(times[False]), statistics.median(times[True])
        total = args.prompts * args.n * tokens
        print(f"{tokens:>7} {free:>16.3f} {cons:>14.3f} {cons / free:>7.3f} {total / cons:>18.0f}")


if __name__ == "__main__":
    main()
