"""Reward throughput: the scorer in process vs the same batch through the ZMQ reward service.

The batch is built from the real Office index (UniTok SIDs, imported 1:1 with a dedup level):
random targets, and for each one a completion that is the exact SID, a SID sharing a random
prefix with it, or a malformed string, in the given mode. In process = `RewardScorer.score` (parse +
vectorized scoring); over ZMQ = `RewardClient.score` against M Ray-actor replicas (msgpack both
ways, the batch split across replicas). Each variant runs `--repeats` times; medians are printed.
With `--teacher FOLDER` (a `gream baseline sasrec` folder trained on the same catalogue), each replica
count also runs with the teacher loaded, the request carrying a history of 20 random items for every
group of `--group` completions (RL's layout): the cost of a model reward beside the rule rewards.

    python benchmarks/reward.py --n 4096 --repeats 5 --replicas 1 2
    python benchmarks/reward.py --modes direct --replicas 1 --teacher runs/demo/baselines/sasrec
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))
from benchmarks.results import record  # noqa: E402
from indexing.importer import import_index  # noqa: E402
from indexing.sid import SidIndex  # noqa: E402
from rl_system.reward.client import RewardClient  # noqa: E402
from rl_system.reward.scoring import RewardScorer  # noqa: E402
from rl_system.reward.server import start_replicas  # noqa: E402


def make_batch(index: SidIndex, n: int, mode: str, seed: int = 0) -> tuple[list[str], list[int]]:
    rng = np.random.default_rng(seed)
    items = np.array(index.items())
    targets = rng.choice(items, n)
    completions = []
    for target in targets:
        codes = list(index.codes(int(target)))
        kind = rng.integers(3)
        if kind == 1:  # keep a random prefix, perturb the rest
            cut = int(rng.integers(index.depth))
            codes = codes[:cut] + [c + 1 for c in codes[cut:]]
        sid = SidIndex.text_of_codes(codes) if kind < 2 else "<a_1> not a SID"
        completions.append(sid if mode == "direct" else f"<think>the user likes pens and paper</think><answer>{sid}</answer>")
    return completions, targets.tolist()


def median_rate(fn, n: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return n / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default=str(ROOT / "data/office/Office.unitok5.index.json"))
    parser.add_argument("--n", type=int, default=4096, help="completions per batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--modes", nargs="+", default=["direct", "reasoning"])
    parser.add_argument("--teacher", help="a gream baseline sasrec folder: also time the service with it loaded")
    parser.add_argument("--dataset", default="Office", help="the data set the teacher was trained on")
    parser.add_argument("--group", type=int, default=8, help="completions sharing one history (--teacher)")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats must be >= 3 (medians)")

    import ray

    index = import_index(args.index).index
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        index_path = index.save(Path(tmp) / "bench.index.json")
        ray.init(address="local", num_cpus=max(args.replicas) + 1, include_dashboard=False, log_to_driver=False)
        try:
            scorer = RewardScorer(index)
            print(f"index: {args.index} ({index.num_items} items, depth {index.depth}, "
                  f"{scorer.semantic_levels} semantic levels); batch {args.n}; median of {args.repeats}")
            print(f"{'mode':<10} {'variant':<22} {'rewards/s':>12} {'vs in-process':>14}")
            for mode in args.modes:
                completions, targets = make_batch(index, args.n, mode)
                local = median_rate(lambda: scorer.score(completions, targets, mode=mode), args.n, args.repeats)
                print(f"{mode:<10} {'in process':<22} {local:>12,.0f} {1.0:>14.2f}")
                rows.append({"mode": mode, "variant": "in process", "rewards_per_s": local, "vs_in_process": 1.0})
                rng = np.random.default_rng(1)
                groups = [rng.choice(index.items(), 20).tolist() for _ in range(-(-args.n // args.group))]
                histories = [groups[i // args.group] for i in range(args.n)]
                for m in args.replicas:
                    for teacher in [None] + ([(args.teacher, args.dataset)] if args.teacher else []):
                        actors, endpoints = start_replicas(index_path, m, mode=mode, teacher=teacher)
                        sent = histories if teacher else None
                        with RewardClient(endpoints, timeout_s=120) as client:
                            client.score(completions[:8], targets[:8], histories=sent and sent[:8])  # connect first
                            remote = median_rate(lambda: client.score(completions, targets, histories=sent), args.n,
                                                 args.repeats)
                        ray.get([a.stop.remote() for a in actors])
                        for a in actors:
                            ray.kill(a)
                        label = f"zmq, {m} replica(s)" + (" + teacher" if teacher else "")
                        print(f"{mode:<10} {label:<22} {remote:>12,.0f} {remote / local:>14.2f}")
                        rows.append({"mode": mode, "variant": label, "rewards_per_s": remote,
                                     "vs_in_process": remote / local})
        finally:
            ray.shutdown()
    record("reward", {"rows": rows}, script=__file__, model=args.teacher, data=args.index,
           settings={"n": args.n, "repeats": args.repeats, "group": args.group, "items": index.num_items})


if __name__ == "__main__":
    main()
