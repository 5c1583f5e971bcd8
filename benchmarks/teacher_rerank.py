"""Generate, then re-rank with the teacher: the SFT model's beam of `--width` re-scored by the run's
SASRec, score = policy log p + weight x teacher log p. RL with a teacher reward has to beat this
inference-time control (issue rl-signal, control c).

The weight is chosen on every validation user (NDCG@10); test is read once, for the chosen weight.
Paired 95% intervals (per-user bootstrap) against the SFT beam's own order (weight 0, the same beam)
and against the SASRec itself on every user (its catalogue ranks, checked against its ranks.json).

    python benchmarks/teacher_rerank.py --base runs/demo --width 50
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from benchmarks.results import record, spec_data  # noqa: E402

KS = (1, 5, 10)
WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, float("inf"))  # inf: the teacher's order within the beam


def compare(ranks_a: np.ndarray, ranks_b: np.ndarray, users: np.ndarray) -> dict:
    """B - A per metric with its paired interval (users aligned already)."""
    from gream.paired import paired_bootstrap
    from sft.metrics import per_example_metrics

    a, b = per_example_metrics(ranks_a, KS), per_example_metrics(ranks_b, KS)
    names = list(a)
    intervals = paired_bootstrap(np.stack([b[n] - a[n] for n in names], 1), users)
    return {n: {"diff": i.diff, "low": i.low, "high": i.high} for n, i in zip(names, intervals)}


def sasrec_ranks(base: Path, split: str, c) -> np.ndarray:
    """The teacher's own catalogue rank of every target (a SASRec evaluated on every user), checked
    against the users its ranks.json holds: the scorer loaded is the one `gream baseline sasrec` evaluated."""
    from cluster.eval_record import read_ranks
    from gream.paired import align

    users = np.array([ex.user for ex in c.examples])
    _, ranks = c.teacher.score([list(ex.history) for ex in c.examples], np.array([ex.target for ex in c.examples]))
    record = read_ranks(base / "baselines/sasrec")
    kept = record.splits[split]
    mine, theirs = align(users, kept.users)
    capped = np.where(ranks[mine] < record.depth, ranks[mine], -1)
    if len(mine) == 0 or (capped != kept.ranks[theirs]).mean() > 0.01:
        raise SystemExit(f"{base}/baselines/sasrec: the scorer's ranks differ from its ranks.json on {split}")
    return ranks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=REPO / "configs/demo.yaml")
    ap.add_argument("--base", type=Path, default=REPO / "runs/demo")
    ap.add_argument("--width", type=int, default=50)
    ap.add_argument("--out", type=Path, help="JSON of every figure")
    ap.add_argument("--name", default="teacher_rerank", help="the results file (benchmarks/results/NAME.json)")
    args = ap.parse_args()

    from benchmarks.teacher_gate import beam_candidates
    from rl_system.rerank import rerank
    from sft.metrics import metrics_from_ranks

    result: dict = {"width": args.width, "base": str(args.base)}
    valid = beam_candidates(args.spec, args.base, "valid", args.width)
    targets = np.array([ex.target for ex in valid.examples])
    curve = {w: metrics_from_ranks(rerank(valid.items, valid.policy_logp, valid.teacher_logp, targets, w), KS)
             for w in WEIGHTS}
    chosen = max(WEIGHTS, key=lambda w: curve[w]["ndcg@10"])
    result["valid"] = {str(w): m for w, m in curve.items()}
    result["chosen_weight"] = str(chosen)
    print(f"valid, {len(targets)} users, beam {args.width}: NDCG@10 by weight "
          + ", ".join(f"{w}: {m['ndcg@10']:.4f}" for w, m in curve.items()) + f"; chosen {chosen}")

    for split, c in (("valid", valid), ("test", beam_candidates(args.spec, args.base, "test", args.width))):
        users = np.array([ex.user for ex in c.examples])
        targets = np.array([ex.target for ex in c.examples])
        sft = rerank(c.items, c.policy_logp, c.teacher_logp, targets, 0.0)
        mixed = rerank(c.items, c.policy_logp, c.teacher_logp, targets, chosen)
        teacher = sasrec_ranks(args.base, split, c)
        result[split + "_chosen"] = {"sft_beam": metrics_from_ranks(sft, KS), "reranked": metrics_from_ranks(mixed, KS),
                                     "sasrec": metrics_from_ranks(teacher, KS), "users": len(users),
                                     "reranked_minus_sft": compare(sft, mixed, users),
                                     "reranked_minus_sasrec": compare(teacher, mixed, users)}
        r = result[split + "_chosen"]
        for name in ("reranked_minus_sft", "reranked_minus_sasrec"):
            d = r[name]["ndcg@10"]
            print(f"{split} NDCG@10 {name}: {d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] "
                  f"(reranked {r['reranked']['ndcg@10']:.4f}, SFT beam {r['sft_beam']['ndcg@10']:.4f}, "
                  f"SASRec {r['sasrec']['ndcg@10']:.4f})")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    intervals = {split: {name: result[f"{split}_chosen"].pop(name) for name in ("reranked_minus_sft", "reranked_minus_sasrec")}
                 for split in ("valid", "test")}
    record(args.name, result, intervals=intervals, script=__file__, model=args.base / "sft/model",
           data=spec_data(args.spec), settings={"teacher": str(args.base / "baselines/sasrec")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
