"""BENCHMARKS.md's section on Office quality: the quality records (benchmarks/quality.py), each one
model's seeds against another's on every user of both splits, with pooled paired intervals overall
and per long-tail segment, in one table."""
from __future__ import annotations

from benchmarks.report_md import Row, Section, interval, provenance, table, verdict

# The quality records this section shows, in order, and what each comparison asks.
RECORDS = {"quality_triece": "the demo's SFT (trie-masked cross-entropy, `sft.loss: trie_ce`, distilled from the tuned "
                             "SASRec, `sft.distill`) against that SASRec",
           "quality_triece_distill": "what the trie-masked loss adds to the distilled SFT",
           "quality_distill_plain": "what distillation adds to the plain cross-entropy SFT"}
HEADLINE = ("quality_triece", "quality_triece_distill")  # the records with rows in the summary table
COLUMNS = (("valid", "ndcg@10", None), ("test", "ndcg@10", None), ("test", "recall@10", None),
           ("test", "ndcg@10", "tail"), ("test", "ndcg@10", "long"))


def standing(m: dict) -> str:
    """Where the left model stands against the right by the interval of left - right."""
    return {"higher": "ahead", "lower": "behind", "no difference": "level (interval spans 0)"}[verdict(m)]


def cell(iv: dict, split: str, metric: str, segment: str | None) -> dict | None:
    block = iv["pooled"] if segment is None else iv["segments"].get(segment)
    return None if block is None else block[split]["metrics"][metric]


def rows(r: dict[str, dict]) -> list[Row]:
    out = []
    for name in (n for n in HEADLINE if n in r):
        f, iv = r[name]["figures"], r[name]["intervals"]
        left, right = f["names"]
        for split, metric, segment in COLUMNS[:2]:
            m = cell(iv, split, metric, segment)
            out.append(Row(f"{left} against {right}, {split} NDCG@10, every Office user, {len(iv['pairs'])} seeds each",
                           f"{left} {f['medians'][f'{left} med'][f'{split} {metric}']:.4f}",
                           f"{right} {f['medians'][f'{right} med'][f'{split} {metric}']:.4f}", interval(m), standing(m)))
    return out


def body(r: dict[str, dict]) -> str:
    shown = [n for n in RECORDS if n in r]
    models: dict[str, dict] = {}
    for name in shown:
        f = r[name]["figures"]
        for label in f["names"]:
            models.setdefault(label, f["medians"][f"{label} med"])
    medians = [[label, *(f"{m[f'{split} {metric}']:.4f}" for split, metric, _ in COLUMNS[:3])] for label, m in models.items()]
    diffs = []
    for name in shown:
        f, iv = r[name]["figures"], r[name]["intervals"]
        diffs.append([f"{f['names'][0]} - {f['names'][1]}",
                      *(interval(m) if (m := cell(iv, *c)) else "-" for c in COLUMNS)])
    sizes = ", ".join(f"{split} {n:,}" for split, n in r[shown[0]]["figures"]["split_sizes"].items())
    parts = ["Does the generative model rank as well as a tuned SASRec? Every Office user of both splits "
             f"({sizes}), 3 seeds of each model; per user, each model's metric averaged over its seeds, then the "
             "bootstrap interval of the difference (users resampled): it covers the users, with the seed noise "
             "averaged out. Segments (`indexing/segments.py`): tail = targets outside the 20% most bought items, "
             "long = users above the median history. The comparisons: "
             + "; ".join(f"{RECORDS[n]} (`{n}`)" for n in shown) + ".", "",
             table(["model (median of seeds)", "valid NDCG@10", "test NDCG@10", "test Recall@10"], medians), "",
             table(["difference [95%]", "valid NDCG@10", "test NDCG@10", "test Recall@10", "tail test NDCG@10",
                    "long test NDCG@10"], diffs), ""]
    for name in shown:
        parts += [f"`{name}`: m" + provenance(r[name])[1:], ""]
    parts.append("SFT runs: `benchmarks/sft_seeds.py --seeds 0 1 2 --set eval.max_users=null`, the teacher "
                 "`runs/demo`'s SASRec (seed 0 of the same settings, `configs/sasrec_office.json`, tuned on "
                 "validation earlier). Their wall times are in the results files (not a speed comparison).")
    return "\n".join(parts)


QUALITY_SECTIONS = [Section("Office quality: SFT objectives, distillation and the tuned SASRec", "quality_triece", rows,
                            body, uses=tuple(RECORDS)[1:])]
