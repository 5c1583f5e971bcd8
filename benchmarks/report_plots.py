"""The plots of BENCHMARKS.md, each drawn from results records alone (benchmarks/results/*.json):
a plot whose records are missing is not drawn. `PLOTS` maps each file in benchmarks/plots/ to the
records it needs and the function that draws it."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gream import plots as draw

RL_RECORDS = ("rl_gain_screen", "rl_gain")  # screens first: the three-seed recipes drawn over them


def recipe_curves(records: dict[str, dict], key: str) -> list[draw.Line]:
    """One line per recipe and seed of the RL records, `key` ("val_ndcg@10", "reward", "kept_share") by step."""
    out = []
    for name in RL_RECORDS:
        for recipe, entry in records.get(name, {}).get("figures", {}).get("recipes", {}).items():
            for c in entry["curves"].values():
                out.append(draw.Line([(int(s), v) for s, v in c.get(key, {}).items()], recipe))
    return out


def sft_line(records: dict[str, dict]) -> dict[str, float]:
    """The SFT model's validation NDCG@10: every run's step 0."""
    starts = [dict(line.points).get(0) for line in recipe_curves(records, "val_ndcg@10")]
    starts = [v for v in starts if v is not None]
    return {"SFT model (step 0)": statistics.median(starts)} if starts else {}


def rl_validation(records: dict[str, dict]):
    return draw.lines(recipe_curves(records, "val_ndcg@10"), hlines=sft_line(records), xlabel="RL step",
                      ylabel="validation NDCG@10 (every validation user)",
                      title="RL recipes and the CE-only control against the SFT model, every seed")


def rl_reward(records: dict[str, dict]):
    return draw.lines(recipe_curves(records, "reward"), xlabel="RL step", ylabel="mean reward of the sampled groups",
                      title="Reward by step, every recipe and seed")


def rl_kept(records: dict[str, dict]):
    return draw.lines(recipe_curves(records, "kept_share"), xlabel="RL step", percent=True,
                      ylabel="groups kept for training",
                      title="Share of sampled groups kept (their rewards differ), every recipe and seed")


def test_differences(records: dict[str, dict]):
    """Test NDCG@10 against the SFT model (and the re-ranked beam against SASRec), paired intervals."""
    labels, values, spread = [], [], []
    for recipe, iv in records.get("rl_gain", {}).get("intervals", {}).items():
        m = iv["test"]["metrics"]["ndcg@10"]
        labels.append(f"{recipe}\n- SFT")
        values.append(m["diff"])
        spread.append((m["low"], m["high"]))
    rerank = records.get("teacher_rerank", {}).get("intervals", {}).get("test", {})
    for name, label in (("reranked_minus_sft", "teacher re-rank\n- SFT"), ("reranked_minus_sasrec", "teacher re-rank\n- SASRec")):
        if name in rerank:
            m = rerank[name]["ndcg@10"]
            labels.append(label)
            values.append(m["diff"])
            spread.append((m["low"], m["high"]))
    fig = draw.bars(labels, values, spread=spread, annotate="{:+.4f}", ylabel="test NDCG@10 difference",
                    title="What beats the SFT model on test: paired differences, 95% intervals (every test user)")
    fig.axes[0].axhline(0, color="k", linewidth=0.8)
    return fig


def beam_eval(records: dict[str, dict]):
    f = records["beam_eval"]["figures"]
    names = {"torch": "gream torch beam", "gream": "gream vLLM beam", "hf": "HF generate"}
    sides = [s for s in names if s in f["sides"]]
    per_user = [1000 * f["sides"][s]["median_s"] / f["users"] for s in sides]
    spread = [(1000 * f["sides"][s]["min_s"] / f["users"], 1000 * f["sides"][s]["max_s"] / f["users"]) for s in sides]
    return draw.bars([names[s] for s in sides], per_user, spread=spread, annotate="{:.2f} ms",
                     ylabel="milliseconds per user (median, min-max)",
                     title=f"Constrained beam evaluation, {f['users']:,} users, width {f['width']}: time per user")


def scaling(records: dict[str, dict]):
    f = records["scaling"]["figures"]
    series = [draw.Line([(int(k), v["completions_per_s"]) for k, v in f[part].items()], name)
              for part, name in (("rollout", "rollout workers"), ("learner", "learner ranks")) if f.get(part)]
    return draw.lines(series, xlabel="rollout workers / learner ranks", ylabel="completions per second",
                      title="RL throughput against the number of rollout workers and learner ranks")


def long_tail(split: str, x: str) -> Callable[[dict[str, dict]], object]:
    """NDCG@10 against one long-tail figure (`x`: "tail_share@10" or "tail recall@10"), a point per
    weight of the swept reward at the SFT figure plus its paired difference, with the difference's
    interval on both axes."""
    def plot(records: dict[str, dict]):
        f, iv = records["objectives"]["figures"], records["objectives"]["intervals"]
        sft = f["sft"][split]
        items = [("SFT", sft[x], sft["ndcg@10"], None, None)]
        for weight, d in iv.items():
            dx, dy = d[split][x], d[split]["ndcg@10"]
            items.append((f"{f['objective']} {weight}", sft[x] + dx["diff"], sft["ndcg@10"] + dy["diff"],
                          (sft[x] + dx["low"], sft[x] + dx["high"]), (sft["ndcg@10"] + dy["low"], sft["ndcg@10"] + dy["high"])))
        label = {"tail_share@10": "tail share of the top 10", "tail recall@10": "Recall@10 of tail-item targets"}[x]
        return draw.points(items, xlabel=f"{split} {label}", ylabel=f"{split} NDCG@10",
                           title=f"Long-tail trade-off on {split}: the {f['objective']} reward's weights against the SFT model")
    return plot


@dataclass(frozen=True)
class Plot:
    needs: tuple[str, ...]  # any of these records is enough
    draw: Callable[[dict[str, dict]], object]


PLOTS: dict[str, Plot] = {
    "rl_validation.png": Plot(RL_RECORDS, rl_validation),
    "rl_reward.png": Plot(RL_RECORDS, rl_reward),
    "rl_kept.png": Plot(RL_RECORDS, rl_kept),
    "rl_test.png": Plot(("teacher_rerank",), test_differences),  # shown in the re-rank section
    "beam_eval.png": Plot(("beam_eval",), beam_eval),
    "scaling.png": Plot(("scaling",), scaling),
    **{f"long_tail_{kind}_{split}.png": Plot(("objectives",), long_tail(split, x))
       for kind, x in (("share", "tail_share@10"), ("recall", "tail recall@10")) for split in ("valid", "test")},
}


def drawable(records: dict[str, dict]) -> list[str]:
    return [name for name, p in PLOTS.items() if any(r in records for r in p.needs)]


def write_plots(records: dict[str, dict], folder: Path) -> list[Path]:
    """Every plot the records allow, into `folder`; plots the records no longer allow are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    keep = drawable(records)
    for stale in folder.glob("*.png"):
        if stale.name not in keep:
            stale.unlink()
    return [draw.save(PLOTS[name].draw(records), folder / name) for name in keep]
