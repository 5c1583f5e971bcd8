"""Constrained-decoding mask cost per step: vectorized SidTrie vs the per-row Python lookup.

The baseline is the MiniOneRec logits processor: a dict from prefix (tuple of token ids) to the
list of allowed next tokens, filled into the mask row by row (`mask[i, allowed] = ...`). Both sides
run in one process on the same batch: 1024 rows drawn from the real SIDs, every SID position plus
the closing step; the trie side includes advancing its states by the previous tokens. Variants
alternate over `--repeats` rounds; the median wall time per decoding step and the ratios are
printed, with the ratio of CPU time beside them (less disturbed by other jobs on a shared box).

    mask    bool [B, V] allowed mask     naive: zeros + per-row loop | trie: allowed_mask | TrieMasker.mask
    logits  disallowed logits -> -inf    naive: MiniOneRec full_like(-inf) + loop + add
                                         | trie: apply(inplace=True) | TrieMasker.apply

    python benchmarks/trie.py --data ../shared/data/beauty --name Beauty
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO))
from benchmarks.results import record  # noqa: E402
from cluster.device import resolve  # noqa: E402
from indexing.importer import import_index  # noqa: E402
from indexing.trie import SidTrie, TrieMasker  # noqa: E402


def naive_table(rows: list[list[int]], end_ids: list[int]) -> dict[tuple[int, ...], list[int]]:
    allowed: dict[tuple[int, ...], set[int]] = defaultdict(set)
    for row in rows:
        for t in range(len(row)):
            allowed[tuple(row[:t])].add(row[t])
        allowed[tuple(row)].update(end_ids)
    return {k: sorted(v) for k, v in allowed.items()}


def naive_mask(table: dict, input_ids: torch.Tensor, t: int, vocab_size: int) -> torch.Tensor:
    mask = torch.zeros(input_ids.shape[0], vocab_size, dtype=torch.bool)
    for i in range(input_ids.shape[0]):  # the loop this module exists to remove
        mask[i, table.get(tuple(input_ids[i, :t].tolist()), [])] = True
    return mask


def naive_logits(table: dict, input_ids: torch.Tensor, t: int, scores: torch.Tensor) -> torch.Tensor:
    mask = torch.full_like(scores, float("-inf"))
    for i in range(input_ids.shape[0]):
        mask[i, table.get(tuple(input_ids[i, :t].tolist()), [])] = 0
    return scores + mask


def trie_loop(trie: SidTrie, ids: torch.Tensor, steps: int, step: Callable) -> list[torch.Tensor]:
    """Run a decoding loop over the SID positions: advance by the previous token, then mask."""
    states, outs = trie.root(ids.shape[0]), []
    for t in range(steps):
        if t:
            states = trie.advance(states, ids[:, t - 1])
        outs.append(step(states))
    return outs


def timed(fn: Callable) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def median_per_step(fns: dict[str, Callable], repeats: int, steps: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) ms per step of each variant. Variants alternate within every repeat, so a
    burst of load from other processes on a shared box hits all of them alike."""
    for fn in fns.values():
        fn()  # warm-up: first-touch allocations and lazy buffers
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(timed(fn))
    return {name: (statistics.median(w for w, _ in runs) * 1e3 / steps, statistics.median(c for _, c in runs) * 1e3 / steps)
            for name, runs in samples.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/beauty"))
    ap.add_argument("--name", default="Beauty")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--vocab-size", type=int, nargs="+", default=[5200, 32000, 151936],
                    help="LLM vocabulary sizes to time (the embedded tiny Qwen3 with SID tokens is about "
                         "5.2k, Llama-2 32k, Qwen3 152k)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (0: torch default). 1 by default: the baseline's loop is single-"
                         "threaded, and on a shared CPU box idle-waiting worker threads make timings erratic")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve(args.device).device_type
    files = sorted(Path(args.data).glob(f"{args.name}.*.index.json"))
    if not files:
        raise SystemExit(f"{args.data}: no {args.name}.*.index.json file")
    index = import_index(files[0]).index
    sid_offset = 1000  # SID tokens sit after a block of ordinary tokens, as after add_tokens
    tok = {t: sid_offset + i for i, t in enumerate(index.vocab())}
    end_ids = [2]
    rows = [[tok[t] for t in index.tokens(i)] for i in index.items()]
    start = time.perf_counter()
    table = naive_table(rows, end_ids)
    naive_build = time.perf_counter() - start
    gen = torch.Generator().manual_seed(0)
    ids = torch.tensor(rows)[torch.randint(len(rows), (args.batch,), generator=gen)]
    steps = index.depth + 1  # every SID position, then the closing token
    results = {"dataset": args.name, "index_file": files[0].name, "items": index.num_items, "depth": index.depth,
               "batch": args.batch, "device": device, "threads": torch.get_num_threads(),
               "naive_table_build_s": round(naive_build, 3), "by_vocab": []}
    print(f"{args.name}: {index.num_items} items, depth {index.depth}, batch {args.batch}, device {device}, "
          f"{torch.get_num_threads()} CPU threads; median ms per decoding step over {args.repeats} runs")
    for v in args.vocab_size:
        if v <= sid_offset + len(tok):
            raise SystemExit(f"--vocab-size {v} must exceed {sid_offset + len(tok)} (SID tokens included)")
        start = time.perf_counter()
        trie = SidTrie.build(rows, v, end_ids, device=device)
        build_s = time.perf_counter() - start
        masker = TrieMasker(trie, args.batch)
        scores = torch.randn(args.batch, v, generator=gen)
        scores_dev, ids_dev = scores.to(device), ids.to(device)
        work = scores_dev.clone()

        def inplace(states):
            # vLLM hands a fresh logits tensor every step; timing reuses one (its values do not change
            # the cost), the correctness check below starts each step from a fresh copy.
            return trie.apply(work, states, inplace=True)

        variants = {
            "mask": {
                "naive": lambda: [naive_mask(table, ids, t, v) for t in range(steps)],
                "trie": lambda: trie_loop(trie, ids_dev, steps, trie.allowed_mask),
                "trie_reused": lambda: trie_loop(trie, ids_dev, steps, masker.mask),
            },
            "logits": {
                "naive": lambda: [naive_logits(table, ids, t, scores) for t in range(steps)],
                "trie": lambda: trie_loop(trie, ids_dev, steps, inplace),
                "trie_reused": lambda: trie_loop(trie, ids_dev, steps, lambda s: masker.apply(scores_dev, s)),
            },
        }
        # The variants must agree before their times mean anything (reused buffers are copied out
        # per step here, since each step overwrites the previous one).
        want = variants["mask"]["naive"]()
        checks = {
            "mask/trie": variants["mask"]["trie"](),
            "mask/trie_reused": trie_loop(trie, ids_dev, steps, lambda s: masker.mask(s).clone()),
            "logits/naive": variants["logits"]["naive"](),
            "logits/trie": trie_loop(trie, ids_dev, steps, lambda s: trie.apply(scores_dev.clone(), s, inplace=True)),
            "logits/trie_reused": trie_loop(trie, ids_dev, steps, lambda s: masker.apply(scores_dev, s).clone()),
        }
        for name, outs in checks.items():
            got = [o.cpu() if o.dtype == torch.bool else torch.isfinite(o).cpu() for o in outs]
            if not all(torch.equal(a, b) for a, b in zip(got, want)):
                raise SystemExit(f"{name}: allowed tokens differ from the naive table (vocab {v})")
        row = {"vocab_size": v, "trie_build_s": round(build_s, 3)}
        for kind, fns in variants.items():
            times = median_per_step(fns, args.repeats, steps)
            ms = {name: wall for name, (wall, _) in times.items()}
            cpu = {name: c for name, (_, c) in times.items()}
            row[kind] = {**{f"{k}_ms": round(x, 3) for k, x in ms.items()},
                         **{f"{k}_cpu_ms": round(x, 3) for k, x in cpu.items()},
                         "speedup": round(ms["naive"] / ms["trie"], 1),
                         "speedup_reused": round(ms["naive"] / ms["trie_reused"], 1),
                         "cpu_speedup_reused": round(cpu["naive"] / max(cpu["trie_reused"], 1e-6), 1)}
            print(f"  vocab {v:>7} {kind:>6}: per-row python {ms['naive']:8.2f} | trie {ms['trie']:7.2f} "
                  f"({ms['naive'] / ms['trie']:5.1f}x) | trie, reused buffer {ms['trie_reused']:6.2f} "
                  f"({ms['naive'] / ms['trie_reused']:6.1f}x; CPU time {row[kind]['cpu_speedup_reused']:6.1f}x)"
                  f"   [trie build {build_s:.2f} s]")
        results["by_vocab"].append(row)
    print(json.dumps(results))
    record("trie", results, script=__file__, argv=argv, data=files[0],
           settings={"repeats": args.repeats, "threads": torch.get_num_threads()})
    return results


if __name__ == "__main__":
    main()
