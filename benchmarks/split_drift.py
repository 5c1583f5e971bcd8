"""How much harder a leave-one-out split's test target is than its validation target, for two
model-free recommenders, so a model's validation-to-test drop can be told apart from the data's.

Per user of the split: validation predicts the second-to-last item from the items before it, test the
last item from the items before it (the validation item included). Both recommenders are fitted on
the training interactions (every user's items before the validation item); for test also on
training + validation interactions (a refit, `+valid`):
  popularity: the 10 most frequent items of the fit;
  transition: the items that most often followed the user's last item in the fit (ties: lower id).
Printed: Recall@10 and NDCG@10 on every user, and the paired test - validation difference with its
95% per-user bootstrap interval (gream.paired).

    python benchmarks/split_drift.py --data ../shared/data/beauty --name Beauty
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/split_drift.py` puts benchmarks/, not the repo, on the path
    sys.path.insert(0, str(REPO))

from benchmarks.results import record  # noqa: E402
from gream.paired import paired_bootstrap  # noqa: E402
from indexing.dataset import load_dataset  # noqa: E402

K = 10


def fit(seqs: Sequence[Sequence[int]], cut: int) -> tuple[list[int], dict[int, list[int]]]:
    """Popularity top K and each item's top K followers over every sequence's items before the last `cut`."""
    pop: Counter = Counter()
    follow: dict[int, Counter] = defaultdict(Counter)
    for seq in seqs:
        part = seq[:len(seq) - cut]
        pop.update(part)
        for a, b in zip(part, part[1:]):
            follow[a][b] += 1
    def top(counts: Counter) -> list[int]:
        return [item for item, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:K]]
    return top(pop), {a: top(c) for a, c in follow.items()}


def gains(ranked: Sequence[Sequence[int]], targets: Sequence[int]) -> np.ndarray:
    """[users, 2]: hit@K and NDCG@K of each user's target in its list."""
    out = np.zeros((len(targets), 2))
    for u, (items, target) in enumerate(zip(ranked, targets)):
        if target in items[:K]:
            out[u] = 1.0, 1.0 / np.log2(items.index(target) + 2)
    return out


def drift(seqs: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
    """{"<recommender> <split>": [users, 2]} for validation, test, and test after a refit."""
    out = {}
    for label, cut, target_at in (("valid", 2, -2), ("test", 2, -1), ("test +valid", 1, -1)):
        pop, follow = fit(seqs, cut)
        targets = [s[target_at] for s in seqs]
        last = [s[target_at - 1] for s in seqs]
        out[f"popularity {label}"] = gains([pop] * len(seqs), targets)
        out[f"transition {label}"] = gains([follow.get(a, []) for a in last], targets)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO / "data/office", help="dataset folder")
    ap.add_argument("--name", default="Office", help="dataset name (file prefix)")
    args = ap.parse_args(argv)
    ds = load_dataset(args.data, args.name)
    users = sorted(ds.sequences)
    seqs = [ds.sequences[u] for u in users]
    scores = drift(seqs)
    print(f"{args.name}: {len(seqs)} users, {ds.num_items} items, {ds.num_interactions} interactions; every user")
    print(f"{'':<24}{'Recall@10':>10}{'NDCG@10':>10}")
    for key, g in scores.items():
        print(f"{key:<24}{g[:, 0].mean():>10.4f}{g[:, 1].mean():>10.4f}")
    intervals = {}
    for rec in ("popularity", "transition"):
        for test in ("test", "test +valid"):
            diff = scores[f"{rec} {test}"] - scores[f"{rec} valid"]
            r, n = paired_bootstrap(diff, np.asarray(users))
            base = scores[f"{rec} valid"].mean(0)
            print(f"{rec} {test} - valid: Recall@10 {r.diff:+.4f} [{r.low:+.4f}, {r.high:+.4f}] "
                  f"({r.diff / base[0]:+.0%}), NDCG@10 {n.diff:+.4f} [{n.low:+.4f}, {n.high:+.4f}] "
                  f"({n.diff / base[1]:+.0%})")
            intervals[f"{rec} {test} - valid"] = {"recall@10": vars(r), "ndcg@10": vars(n)}
    record(f"split_drift_{args.name.lower()}", {
        "users": len(seqs), "items": ds.num_items, "interactions": ds.num_interactions,
        "scores": {key: {"recall@10": g[:, 0].mean(), "ndcg@10": g[:, 1].mean()} for key, g in scores.items()}},
        intervals=intervals, script=__file__, argv=argv, data=args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
