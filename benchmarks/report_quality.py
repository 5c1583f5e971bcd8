"""BENCHMARKS.md's sections for the quality records (benchmarks/quality.py): one model's seeds
against another's on every user of both splits, with pooled paired intervals overall and per
long-tail segment."""
from __future__ import annotations

from benchmarks.report_md import Row, Section, interval, provenance, table

SPLITS = ("valid", "test")
METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")


def standing(m: dict) -> str:
    """Where the left model stands against the right by the interval of left - right."""
    return "ahead" if m["low"] > 0 else "behind" if m["high"] < 0 else "level (interval spans 0)"


def seeds(rec: dict) -> int:
    return len(rec["intervals"]["pairs"])


def quality_section(name: str, title: str, why: str) -> Section:
    """The section of the quality record `name`: `why` says what the comparison asks."""

    def rows(r: dict[str, dict]) -> list[Row]:
        rec = r[name]
        f, iv = rec["figures"], rec["intervals"]
        left, right = f["names"]
        out = []
        for split in SPLITS:
            m = iv["pooled"][split]["metrics"]["ndcg@10"]
            out.append(Row(f"{left} against {right}, {split} NDCG@10, every Office user, {seeds(rec)} seeds each",
                           f"{left} {f['medians'][f'{left} med'][f'{split} ndcg@10']:.4f}",
                           f"{right} {f['medians'][f'{right} med'][f'{split} ndcg@10']:.4f}", interval(m), standing(m)))
        tail = iv["segments"].get("tail", {}).get("test")
        if tail:
            m = tail["metrics"]["ndcg@10"]
            out.append(Row(f"{left} against {right} on tail-item targets, test NDCG@10", "-", "-", interval(m),
                           standing(m)))
        return out

    def body(r: dict[str, dict]) -> str:
        rec = r[name]
        f, iv = rec["figures"], rec["intervals"]
        left, right = f["names"]
        medians = [[f"{split} {m}", f"{f['medians'][f'{left} med'][f'{split} {m}']:.4f}",
                    f"{f['medians'][f'{right} med'][f'{split} {m}']:.4f}", interval(iv["pooled"][split]["metrics"][m])]
                   for split in SPLITS for m in METRICS]
        segments = [[segment, *(interval(parts[split]["metrics"]["ndcg@10"]) + f" ({parts[split]['users']:,} users)"
                                for split in SPLITS)] for segment, parts in iv["segments"].items()]
        walls = "; ".join(f"{run}: " + ", ".join(f"{k} {v:.0f} s" for k, v in w.items())
                          for run, w in f.get("wall_secs", {}).items() if w)
        users = ", ".join(f"{split} {n:,}" for split, n in f["split_sizes"].items())
        return "\n".join([
            f"{why} Every user of both splits ({users}), {seeds(rec)} seeds of each; per user, each model's metric "
            "averaged over its seeds, then the bootstrap interval of the difference (users resampled, "
            f"{f['resamples']} times): the interval covers the users, with the seed noise averaged out.", "",
            provenance(rec), "",
            table(["split metric", f"{left} (median)", f"{right} (median)", f"{left} - {right} [95%]"], medians), "",
            f"By long-tail segment (`indexing/segments.py`), NDCG@10 of {left} - {right}:", "",
            table(["segment", "valid", "test"], segments), "",
            f"Wall times the runs recorded: {walls or 'not recorded'}. They are the runs' own timers, not a speed "
            "comparison: other jobs may have run beside them."])

    return Section(title, name, rows, body)


QUALITY_SECTIONS = [
    quality_section("quality_distill", "SFT distilled from the SASRec against the SASRec",
                    "Does SFT with offline distillation from the tuned SASRec (`sft.distill`) rank as well as that "
                    "SASRec?"),
    quality_section("quality_distill_plain", "SFT distilled from the SASRec against plain SFT",
                    "What does distillation (`sft.distill`) add to the demo's plain cross-entropy SFT?"),
    quality_section("quality", "Plain SFT against the SASRec", "Does the demo's SFT model rank as well as the tuned SASRec?"),
]
