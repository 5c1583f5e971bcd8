"""Before training on a teacher reward: how often does the teacher rank the target above the policy's
own beam negatives? (DESIGN.md section 11; AdaGRPO's gate.)

For every user of a split (validation by default), the SFT model's trie-constrained beam of width
`--width` (the torch beam of `gream eval`) gives the policy's candidates; the teacher is the
`gream baseline sasrec` model of the same run folder. Printed per segment (all, head/tail target,
short/long history, indexing.segments): the share of users where the teacher gives the target a
higher probability than (a) the policy's top-ranked negative and (b) every negative in the beam,
and the same split by whether the policy is uncertain (its top candidate's probability among the
beam below `--uncertain`), where a teacher term would act.

    python benchmarks/teacher_gate.py --base runs/demo
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from benchmarks.results import record, spec_data  # noqa: E402


def gate_rates(target_logp: np.ndarray, negative_logp: np.ndarray) -> dict[str, float]:
    """target_logp [U]; negative_logp [U, N] the teacher's log-probabilities of each user's beam
    negatives in the policy's order, -inf where absent. The share of users whose target the teacher
    puts above the policy's top negative, and above all of them."""
    top = negative_logp[:, 0]
    return {"above_top_negative": float((target_logp > top).mean()),
            "above_all_negatives": float((target_logp[:, None] > negative_logp).all(1).mean()),
            "users": int(len(target_logp))}


@dataclass
class Candidates:
    """The SFT model's beam for every user of a split, with the teacher's view of each candidate."""
    examples: list  # indexing.dataset.Example, in split order
    train: list
    items: np.ndarray  # [U, W] item ids, best first; -1 an empty slot
    policy_logp: np.ndarray  # [U, W] the beam's sequence log-probabilities
    teacher_logp: np.ndarray  # [U, W] log p_T(item | history); -inf on an empty slot
    target_logp: np.ndarray  # [U] log p_T(target | history)
    teacher: object


@dataclass
class Beam:
    """A run folder's SFT model's trie-constrained beam on every user of a split."""
    dataset: object  # indexing.dataset.Dataset
    examples: list  # indexing.dataset.Example, in split order
    train: list
    items: np.ndarray  # [U, W] item ids, best first; -1 an empty slot
    logp: np.ndarray  # [U, W] the beam's sequence log-probabilities


def beam(spec_path: Path, base: Path, split_name: str, width: int, sets: tuple[str, ...] = ()) -> Beam:
    """Run folder `base`'s SFT model (sft/model), its beam of `width` (the torch beam of `gream eval`)
    on every user of `split_name`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cluster.spec import load_spec
    from indexing.dataset import load_from_spec, split_from_spec
    from indexing.sid import SidIndex
    from indexing.trie import SidTrie
    from sft.hf_beam import beam_search
    from sft.prompts import build_prompts

    spec = load_spec(spec_path, [*sets, f"run_dir={base}"])
    ds = load_from_spec(spec)
    split = split_from_spec(spec, ds)
    examples = list(getattr(split, split_name))
    model_dir = base / "sft/model"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    index = SidIndex.load(base / f"index/{spec.data.name}.index.json")
    trie = SidTrie.from_index(index, tok.get_vocab(), model.get_output_embeddings().weight.shape[0], [tok.eos_token_id])
    prompts = build_prompts(tok, index, examples, False).prompt_ids
    beams = beam_search(model, prompts, trie, width, tok.pad_token_id, torch.device("cpu"))
    rows = beams.rows.numpy()
    items = np.where(rows >= 0, np.asarray(index.items(), dtype=np.int64)[rows.clip(min=0)], -1)
    return Beam(ds, examples, split.train, items, beams.scores.numpy())


def beam_candidates(spec_path: Path, base: Path, split_name: str, width: int) -> Candidates:
    """`beam` with its `gream baseline sasrec` teacher's log-probabilities of the candidates and the targets."""
    from rl_system.reward.teacher import Teacher

    b = beam(spec_path, base, split_name, width)
    teacher = Teacher(base / "baselines/sasrec", b.dataset.num_items, b.dataset.name)
    histories = [list(ex.history) for ex in b.examples]
    target_logp, _ = teacher.score(histories, np.array([ex.target for ex in b.examples]))
    return Candidates(b.examples, b.train, b.items, b.logp, teacher.candidate_logp(histories, b.items),
                      target_logp, teacher)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=REPO / "configs/demo.yaml")
    ap.add_argument("--base", type=Path, default=REPO / "runs/demo")
    ap.add_argument("--split", choices=("valid", "test"), default="valid")
    ap.add_argument("--width", type=int, default=10)
    ap.add_argument("--uncertain", type=float, default=0.5, help="top candidate's share of the beam's probability")
    args = ap.parse_args()

    from indexing.segments import segment_masks

    c = beam_candidates(args.spec, args.base, args.split, args.width)
    examples, target_logp = c.examples, c.target_logp
    targets = np.array([ex.target for ex in examples])
    is_target = c.items == targets[:, None]
    # the negatives first, in the policy's order
    order = np.argsort(is_target | (c.items < 0), axis=1, kind="stable")
    negative_logp = np.take_along_axis(np.where(is_target, -np.inf, c.teacher_logp), order, 1)
    scores = c.policy_logp
    share = np.exp(scores[:, 0]) / np.exp(scores).sum(1)
    uncertain = share < args.uncertain
    segments = {"all": np.ones(len(examples), dtype=bool), **segment_masks(examples, c.train)}
    print(f"{args.split}: {len(examples)} users, beam width {args.width}; teacher {c.teacher.folder}; "
          f"policy uncertain (top share < {args.uncertain}) for {uncertain.mean():.1%} of users")
    print(f"{'segment':<22}{'users':>7}{'> top negative':>16}{'> all negatives':>17}")
    rates = {}
    for name, mask in segments.items():
        for label, rows in ((name, mask), (f"{name}, uncertain", mask & uncertain)):
            if rows.any():
                r = rates[label] = gate_rates(target_logp[rows], negative_logp[rows])
                print(f"{label:<22}{r['users']:>7}{r['above_top_negative']:>16.3f}{r['above_all_negatives']:>17.3f}")
    record("teacher_gate", {"split": args.split, "users": len(examples), "uncertain_share": uncertain.mean(),
                            "segments": rates}, script=__file__, model=args.base / "sft/model", data=spec_data(args.spec),
           settings={"width": args.width, "uncertain": args.uncertain, "teacher": str(c.teacher.folder)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
