"""SFT against SASRec on whole splits: the trie-constrained beam metrics (width `eval.beam_width`) of
each finished SFT run over every user of valid and test, beside the all-user SASRec figures that
`gream baseline sasrec` keeps under `meta.all_users` of its eval.json; per run, medians, and the
ratio of the test Recall@10 medians (the sft issue's target: >= 1).

`gream eval` reports the spec's first `eval.max_users` users (500 on the demo, one standard error of
Recall@10 about 0.012 there); over all 4,905 Office users it is about 0.004, small enough to compare
one setting with another.

    python benchmarks/sft_vs_sasrec.py --sft runs/e9 runs/d3_s1 runs/d3_s2 \\
        --sasrec runs/sasrec_s0 runs/sasrec_s1 runs/sasrec_s2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/sft_vs_sasrec.py` puts benchmarks/, not the repo, on the path
    sys.path.insert(0, str(REPO))

from benchmarks.advantage_compare import (  # noqa: E402
    format_table,
    median_column,
    read_json,
)
from benchmarks.results import record, spec_data  # noqa: E402
from cluster.run_layout import RunLayout  # noqa: E402

KEYS = ("recall@1", "recall@5", "recall@10", "ndcg@5", "ndcg@10")


def column(evaluation: dict) -> dict[str, float]:
    return {f"{split} {key}": evaluation[split][key] for split in ("valid", "test") for key in KEYS}


def sasrec_all_users(run_dir: Path) -> dict:
    path = RunLayout(run_dir).eval_file("baselines/sasrec")
    result = read_json(path)
    if result is None or "all_users" not in result.get("meta", {}):
        raise SystemExit(f"{path}: no SASRec evaluation with meta.all_users; run `gream baseline sasrec` first")
    return result["meta"]["all_users"]


def sft_all_users(spec_path: Path, sets: list[str], run_dir: Path) -> dict:
    """Beam metrics of `run_dir`'s SFT model on its own index, every user of valid and test (`sets`
    may narrow that with `eval.max_users`)."""
    from cluster.placement import init_ray
    from cluster.spec import load_spec
    from indexing.build import index_path
    from indexing.dataset import split_from_spec
    from indexing.sid import SidIndex
    from rl_system.evaluate import evaluate_model

    spec = load_spec(spec_path, ["eval.max_users=null", *sets, f"run_dir={run_dir.resolve()}"])
    model = spec.layout.model("sft")
    if not (model / "config.json").exists():
        raise SystemExit(f"{model}: no trained SFT model; run `gream sft` into {run_dir} first")
    init_ray(spec.cluster)
    return evaluate_model(spec, model, SidIndex.load(index_path(spec)), split_from_spec(spec), sampling=False)[0]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=REPO / "configs/demo.yaml", help="data split, beam width, cluster")
    ap.add_argument("--sft", type=Path, nargs="+", required=True, help="run dirs holding sft/model and index/")
    ap.add_argument("--sasrec", type=Path, nargs="+", required=True,
                    help="run dirs holding baselines/sasrec/eval.json")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="spec override for every SFT run")
    args = ap.parse_args(argv)

    sasrec = {f"sasrec {i}": column(sasrec_all_users(run)) for i, run in enumerate(args.sasrec)}
    sft = {f"sft {i}": column(sft_all_users(args.spec, args.set, run)) for i, run in enumerate(args.sft)}
    sft_median, sasrec_median = median_column(list(sft.values())), median_column(list(sasrec.values()))
    table = {"SFT med": sft_median, "SASRec med": sasrec_median, **sft, **sasrec}
    print(format_table(table, "\nAll users, trie-constrained beam (SFT) vs full ranking (SASRec)"))
    for i, run in enumerate(args.sft):
        print(f"sft {i}: {run}")
    for i, run in enumerate(args.sasrec):
        print(f"sasrec {i}: {run}")
    ratio = sft_median["test recall@10"] / sasrec_median["test recall@10"]
    print(f"test Recall@10, SFT median / SASRec median: {ratio:.3f}")
    record("sft_vs_sasrec", {"table": table, "test recall@10 ratio": ratio}, script=__file__, argv=argv,
           data=spec_data(args.spec, args.set),
           settings={"sft": [str(r) for r in args.sft], "sasrec": [str(r) for r in args.sasrec], "set": args.set})
    return 0


if __name__ == "__main__":
    sys.exit(main())
