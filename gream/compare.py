"""`gream compare A B [C ...]`: evaluated stages side by side, each against the first, user by user.

A stage is `RUN_DIR:STAGE`, the folder `RUN_DIR/STAGE` holding eval.json and ranks.json
(cluster.eval_record), e.g. `runs/x:sft`, `runs/x:rl`, `runs/y:baselines/sasrec`. For each split
and each Recall@K / NDCG@K that the ranks determine (K in eval.ks, up to the smaller rank depth),
the table gives each stage's figure on its own users (its eval.json value), the difference of the
per-user values against the first stage on the users both were evaluated on, and the percentile
bootstrap interval of that difference (gream/paired.py: users resampled, fixed seed). An interval
holding 0 reads "no difference". Stages evaluated on different users are compared on the
intersection, with the counts printed. `--segment head|tail|short|long` restricts every stage to
the examples of one long-tail segment (indexing.segments), from the labels each ranks.json holds.
`RUN_DIR:STAGE@MODE` takes an answer mode other than direct (eval.modes: reasoning, think_ahead):
its ranks-<mode>.json and its figures under eval.json's "modes", e.g. `runs/x:rl runs/x:rl@reasoning`.

Where every stage's ranks.json holds the users' top-K lists, the beyond-accuracy metrics follow
(sft.beyond_accuracy): the per-user ones (tail share, novelty, distinct codes, text distance) paired
as the accuracy metrics are, and coverage@K, a figure of the whole set of lists, by resampling the
same users (gream.paired.coverage_bootstrap).

A stage evaluated with `eval.rerank` (generate, then re-rank) says so in eval.json's "meta"; the
header names its teacher, weight and beam width, and `--json` has them under "reranked".
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from cluster.errors import BadRequest
from cluster.eval_record import RankRecord, read_eval, read_ranks
from cluster.eval_spec import ANSWER_MODES
from cluster.rerank_spec import POPULARITY
from cluster.run_layout import ranks_file
from gream.paired import LEVEL, RESAMPLES, SEED, align, coverage_bootstrap, paired_bootstrap
from sft.beyond_accuracy import coverage
from sft.metrics import metric_names, per_example_metrics

AGREEMENT = 1e-9  # eval.json figures and the ranks' recomputation must agree to float rounding


@dataclass(frozen=True)
class Stage:
    label: str  # as given on the command line
    folder: Path
    ranks: RankRecord
    rerank: dict | None = None  # eval.json's meta.rerank: the teacher that re-ranked its beams


def parse_stage(text: str) -> Path:
    """`RUN_DIR:STAGE` -> RUN_DIR/STAGE."""
    run, sep, stage = text.rpartition(":")
    if not sep or not run or not stage:
        raise BadRequest(f"'{text}' is not RUN_DIR:STAGE (e.g. runs/x:sft, runs/x:rl, runs/x:baselines/sasrec)")
    return Path(run) / stage


def parse_mode(text: str) -> tuple[str, str]:
    """`RUN_DIR:STAGE@MODE` -> (`RUN_DIR:STAGE`, MODE); without `@MODE` the mode is direct."""
    stage, at, mode = text.rpartition("@") if "@" in text.rpartition(":")[2] else (text, "", "direct")
    if mode not in ANSWER_MODES:
        raise BadRequest(f"'{text}': unknown answer mode '{mode}'; expected one of {', '.join(ANSWER_MODES)}")
    return stage, mode


def mode_figures(folder: Path, mode: str) -> dict:
    """eval.json's figures of one answer mode: the top level for direct, else its "modes" entry."""
    figures = read_eval(folder)
    if mode == "direct":
        return figures
    if mode not in figures.get("modes", {}):
        held = ", ".join(["direct", *figures.get("modes", {})])
        raise BadRequest(f"{folder / 'eval.json'}: no '{mode}' evaluation (it holds {held}); evaluate again "
                         f"with eval.modes holding {mode}")
    return figures["modes"][mode]


def load_stage(text: str) -> Stage:
    """The stage's ranks, checked against its eval.json: a ranks.json that does not reproduce the
    figures beside it (a stale file) is an error, not a silent mismatch."""
    stage, mode = parse_mode(text)
    folder = parse_stage(stage)
    ranks, figures = read_ranks(folder, mode), mode_figures(folder, mode)
    meta = read_eval(folder).get("meta")
    for split, s in ranks.splits.items():
        recomputed = {k: float(v.mean()) for k, v in {**per_example_metrics(s.ranks, ranks.ks), **s.lists}.items()}
        if s.top is not None and ranks.items:
            recomputed[f"coverage@{s.top.shape[1]}"] = coverage(s.top, ranks.items)
        reported = figures.get(split, {})
        for key, value in recomputed.items():
            if key in reported and not math.isclose(value, reported[key], rel_tol=0, abs_tol=AGREEMENT):
                raise BadRequest(f"{folder}: {ranks_file(mode)} gives {split} {key} {value:.6f} but eval.json says "
                                 f"{reported[key]:.6f}; evaluate the stage again")
    return Stage(text, folder, ranks, meta.get("rerank") if isinstance(meta, dict) else None)


def shared_metrics(stages: Sequence[Stage]) -> tuple[list[int], list[str]]:
    """Cut-offs of any stage's eval.ks that every stage's ranks resolve, and their metric names."""
    depth = min(s.ranks.depth for s in stages)
    ks = sorted({k for s in stages for k in s.ranks.ks if k <= depth})
    return ks, metric_names(ks)


def labels(stage: Stage, segment: str) -> bool:
    """Whether every split of the stage's ranks.json labels `segment`."""
    return all(segment in s.segments for s in stage.ranks.splits.values())


def in_segment(stage: Stage, segment: str) -> Stage:
    """The stage with only its examples of `segment` in every split."""
    for split, ranks in stage.ranks.splits.items():
        if segment not in ranks.segments:
            known = ", ".join(sorted(ranks.segments)) or "none"
            raise BadRequest(f"{stage.folder}: ranks.json labels no '{segment}' segment on {split} (labels: {known}); "
                             "evaluate the stage again to write the long-tail labels")
    splits = {name: s.only(segment) for name, s in stage.ranks.splits.items()}
    return Stage(stage.label, stage.folder, RankRecord(stage.ranks.depth, stage.ranks.ks, splits, items=stage.ranks.items),
                 stage.rerank)


def list_metrics(stages: Sequence[Stage]) -> tuple[list[str], int | None]:
    """The per-user beyond-accuracy metrics every split of every stage holds (in the first's order),
    and the cut-off K of coverage@K when every one holds top lists and the catalogue size (else None)."""
    held = [s for stage in stages for s in stage.ranks.splits.values()]
    names = [name for name in held[0].lists if all(name in s.lists for s in held)]
    tops = [s.top for s in held]
    if any(top is None for top in tops) or not all(stage.ranks.items for stage in stages):
        return names, None
    return names, min(top.shape[1] for top in tops)


def compare(stages: Sequence[Stage], resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL,
            segment: str | None = None) -> dict:
    """Every stage against the first, per split both hold: the JSON that `--json` prints."""
    if len(stages) < 2:
        raise BadRequest("compare needs at least two stages")
    if resamples < 1:
        raise BadRequest(f"--resamples must be >= 1, got {resamples}")
    if segment is not None:
        stages = [in_segment(s, segment) for s in stages]
    ks, accuracy = shared_metrics(stages)
    lists, k = list_metrics(stages)
    paired, covered = [*accuracy, *lists], [f"coverage@{k}"] if k else []
    names = paired + covered
    first = stages[0]
    out = {"stages": [s.label for s in stages], "folders": [str(s.folder) for s in stages], "metrics": names,
           "resamples": resamples, "seed": seed, "level": level, "segment": segment,
           "reranked": [s.rerank for s in stages], "splits": {}}
    for split in first.ranks.splits:
        # A split must be held by every stage, and (within a segment) hold examples in every one.
        if not all(split in s.ranks.splits and len(s.ranks.splits[split].users) for s in stages):
            continue
        per_user = [{**per_example_metrics(s.ranks.splits[split].ranks, ks), **s.ranks.splits[split].lists}
                    for s in stages]
        base = first.ranks.splits[split]
        comparisons = []
        for stage, values in zip(stages[1:], per_user[1:]):
            other = stage.ranks.splits[split]
            ia, ib = align(base.users, other.users)
            row = {"a": first.label, "b": stage.label, "users_a": len(base.users), "users_b": len(other.users),
                   "common_users": len(ia), "metrics": {}}
            if len(ia):
                diff = np.stack([values[m][ib] - per_user[0][m][ia] for m in paired], axis=1)
                intervals = paired_bootstrap(diff, base.users[ia], resamples, seed, level)
                if k:
                    intervals.append(coverage_bootstrap(base.top[ia, :k], other.top[ib, :k], base.users[ia],
                                                        first.ranks.items, resamples, seed, level))
                for name, iv in zip(names, intervals):
                    row["metrics"][name] = {"diff": iv.diff, "low": iv.low, "high": iv.high, "verdict": iv.verdict}
            comparisons.append(row)
        out["splits"][split] = {
            "users": [len(s.ranks.splits[split].users) for s in stages],
            "values": {**{m: [float(v[m].mean()) for v in per_user] for m in paired},
                       **{m: [coverage(s.ranks.splits[split].top[:, :k], s.ranks.items) for s in stages]
                          for m in covered}},
            "comparisons": comparisons}
    return out


def format_tables(result: dict) -> str:
    level = round(100 * result["level"])
    lines = [f"paired bootstrap: {result['resamples']} resamples of users, seed {result['seed']}, {level}% intervals; "
             "figures on each stage's own users, B-A on the users both hold"
             + (f"; only the '{result['segment']}' segment" if result.get("segment") else "")]
    for label, rerank in zip(result["stages"], result.get("reranked", ())):
        if rerank:
            scorer = ("the inverse-popularity prior" if rerank["path"] == POPULARITY
                      else f"the SASRec {rerank['path']}")
            lines.append(f"{label}: generated, then re-ranked by {scorer} "
                         f"(weight {rerank['weight']}, beam of {rerank['width']})")
    for split, data in result["splits"].items():
        values = data["values"]
        for i, row in enumerate(data["comparisons"], start=1):
            lines.append(f"\n{split}: A = {row['a']} ({row['users_a']} users), B = {row['b']} ({row['users_b']} users)")
            if row["users_a"] != row["common_users"] or row["users_b"] != row["common_users"]:
                lines.append(f"  note: not the same users; B-A on the {row['common_users']} users both hold")
            width = max(10, *(len(name) + 1 for name in result["metrics"]))
            lines.append(f"  {'metric':<{width}}{'A':>9}{'B':>9}{'B-A':>10}  {f'{level}% CI':<21} verdict")
            for name in result["metrics"]:
                a, b = values[name][0], values[name][i]
                m = row["metrics"].get(name)
                tail = (f"{m['diff']:>+10.4f}  [{m['low']:+.4f}, {m['high']:+.4f}]   {m['verdict']}" if m
                        else f"{'-':>10}  no common users")
                lines.append(f"  {name:<{width}}{a:>9.4f}{b:>9.4f}{tail}")
    return "\n".join(lines)


def main(specs: Sequence[str], as_json: bool, resamples: int = RESAMPLES, seed: int = SEED,
         segment: str | None = None) -> str:
    result = compare([load_stage(s) for s in specs], resamples, seed, segment=segment)
    if not result["splits"]:
        raise BadRequest(f"no split is evaluated in every one of {', '.join(specs)}")
    return json.dumps(result, indent=2) if as_json else format_tables(result)
