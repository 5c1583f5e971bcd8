"""Where a semantic-ID model loses the item, level by level: the teacher-forced rank of each level's
true code among all of that level's codes, at the answer slot of the seqrec prompt.

A width-K beam first has to keep the right first-level code among K; this shows how often the model
ranks it there, and how well it picks the next code once the earlier ones are right.

    python benchmarks/level_accuracy.py                        # the demo's SFT model, 500 validation users
    python benchmarks/level_accuracy.py --model M --index I --split test --users 1000
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/level_accuracy.py` puts benchmarks/, not the repo, on the path
    sys.path.insert(0, str(REPO))

from benchmarks.beam_eval import add_model_args, missing_model_inputs  # noqa: E402
from benchmarks.results import record, spec_data  # noqa: E402

KS = (1, 10)


def level_ranks(logits: torch.Tensor, level_codes: Sequence[torch.Tensor], target: Sequence[int]) -> list[int]:
    """`logits` [levels, vocab]: row l predicts level l's token. Rank (0 = best) of the true token
    `target[l]` among `level_codes[l]` (that level's token ids); ties count in the target's favour."""
    ranks = []
    for row, codes, true in zip(logits, level_codes, target):
        scores = row[codes]
        ranks.append(int((scores > row[true]).sum()))
    return ranks


def hit_rates(ranks: Sequence[Sequence[int]], ks: Sequence[int] = KS) -> list[dict[int, float]]:
    """Per level, the share of examples whose true code ranks within the top k."""
    levels = len(ranks[0]) if ranks else 0
    return [{k: sum(r[level] < k for r in ranks) / len(ranks) for k in ks} for level in range(levels)]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--spec", type=Path, default=REPO / "configs/demo.yaml", help="the data split to read")
    ap.add_argument("--split", choices=("valid", "test"), default="valid")
    ap.add_argument("--users", type=int, default=500, help="first N users of the split")
    args = ap.parse_args(argv)
    missing = missing_model_inputs(args)
    if missing:
        print(missing, file=sys.stderr)
        return 2

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cluster.spec import load_spec
    from indexing.dataset import split_from_spec
    from indexing.sid import LEVEL_LETTERS, SidIndex
    from sft.prompts import build_prompts

    index = SidIndex.load(args.index)
    examples = list(getattr(split_from_spec(load_spec(args.spec)), args.split))[: args.users]
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    vocab = tok.get_vocab()
    letters = LEVEL_LETTERS[: index.depth]
    level_codes = [torch.tensor([i for t, i in vocab.items() if t.startswith(f"<{letter}_")]) for letter in letters]
    prompts = build_prompts(tok, index, examples, reasoning=False)
    ranks = []
    with torch.no_grad():
        for ids, item in zip(prompts.prompt_ids, prompts.targets):
            target = [vocab[t] for t in index.tokens(item)]
            logits = model(torch.tensor([ids + target[:-1]])).logits[0, len(ids) - 1:]
            ranks.append(level_ranks(logits, level_codes, target))
    rates = hit_rates(ranks)
    print(f"{args.model}, {args.split}, first {len(examples)} users: teacher-forced rank of the true code per level")
    print(f"{'level':<7}{'codes':>7}" + "".join(f"{f'top {k}':>9}" for k in KS))
    for letter, codes, rate in zip(letters, level_codes, rates):
        print(f"{letter:<7}{len(codes):>7}" + "".join(f"{rate[k]:>9.3f}" for k in KS))
    record("level_accuracy", {"users": len(examples), "split": args.split,
                              "levels": {letter: {"codes": len(codes), **{f"top {k}": rate[k] for k in KS}}
                                         for letter, codes, rate in zip(letters, level_codes, rates)}},
           script=__file__, argv=argv, model=args.model, data=spec_data(args.spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
