"""`gream report RUN`: one self-contained HTML page about a run, to attach to a review.

The page holds the run's plots as PNG images inside the file (data URIs, so the one file is the
whole report): RL reward by step, validation by step against the SFT model (step 0), the share of
sampled groups kept for training, and the time of each step's parts; then every evaluated stage's
figures, and with `--against RUN_DIR:STAGE` the paired per-user differences of this run's evaluated
stages against that one (gream/compare.py: users resampled, 95% intervals). Everything is read
from files the stages write (gream/run_state.py); a plot whose metrics the run never logged is left
out, and so is a stage without an evaluation.

Every value from the run's files reaches the page through `html.escape`.
"""
from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Sequence

from cluster.errors import BadRequest
from cluster.run_layout import RANKS_FILE
from gream.run_state import TIME_PARTS, RunState, read_run_state

METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "pass@10", "tail_share@10", "coverage@10")
VAL_KEYS = ("val/ndcg@10", "val/recall@10")
STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1000px;color:#1d2330}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}img{max-width:100%;display:block;margin:8px 0}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}.meta{color:#555}.higher{color:#1e8449}.lower{color:#c0392b}"""


def plots(state: RunState) -> list[tuple[str, str, bytes]]:
    """(id, caption, PNG) of every plot the run has data for."""
    from gream import plots as draw

    rl, out = state.rl, []
    reward = rl.points("reward/mean")
    if reward:
        std = dict(rl.points("reward/std"))
        band = [(s, v - std[s], v + std[s]) for s, v in reward if s in std]
        fig = draw.lines([draw.Line(reward, "reward mean", band), draw.Line(rl.points("hit_rate"), "exact-hit rate")],
                         title="RL reward by step (mean, band: +- one std)", xlabel="step", ylabel="reward")
        out.append(("reward", "Reward by step", draw.png(fig)))
    for key in VAL_KEYS:
        val = rl.points(key)
        if val:
            sft = dict(val).get(0)
            fig = draw.lines([draw.Line(val, f"RL, {key}")], hlines={} if sft is None else {"SFT model (step 0)": sft},
                             title=f"{key} by step (step 0: the SFT weights)", xlabel="step", ylabel=key)
            out.append((f"val-{key.split('/', 1)[1].replace('@', '-')}", f"Validation {key.split('/', 1)[1]}",
                        draw.png(fig)))
    kept = kept_share(state)
    if kept:
        dropped = [draw.Line(rl.points(key), key) for key in rl.values if key.startswith("dropped/") and rl.points(key)]
        fig = draw.lines([draw.Line(kept, "groups kept for training"), *dropped], percent=True,
                         title="Sampled groups kept (reward varies) and dropped, by step", xlabel="step",
                         ylabel="share of sampled groups")
        out.append(("kept", "Kept groups by step", draw.png(fig)))
    timed = [s for s, _ in rl.points("time/step")]
    if timed:
        by_step = {p: dict(rl.points(f"time/{p}")) for p in (*TIME_PARTS, "validate")}
        parts = {p: [values.get(s) for s in timed] for p, values in by_step.items() if values}
        fig = draw.stacked(timed, parts, title="Time per step, by part", ylabel="seconds")
        out.append(("timings", "Step timings", draw.png(fig)))
    return out


def kept_share(state: RunState) -> list[tuple[int, float]]:
    sampled = dict(state.rl.points("sampled_groups"))
    return [(s, k / sampled[s]) for s, k in state.rl.points("kept_groups") if sampled.get(s)]


def evaluation_table(state: RunState) -> str:
    rows = []
    for stage, splits in state.eval.items():
        for split, figures in splits.items():
            rows.append([f"{stage} / {split}", *(_num(figures.get(m)) for m in METRICS)])
    return _table(["stage / split", *METRICS], rows, 'class="eval"') if rows else "<p>No stage evaluated yet.</p>"


def paired_tables(run_dir: Path, against: str, resamples: int) -> str:
    """This run's evaluated stages (with ranks) each against `against`, per split and metric."""
    from gream.compare import compare, load_stage

    other = load_stage(against)
    mine = [f"{run_dir}:{s}" for s in ("sft", "rl") if (run_dir / s / RANKS_FILE).exists()]
    if not mine:
        raise BadRequest(f"{run_dir}: no evaluated stage with {RANKS_FILE} to compare against {against}; "
                         "run gream eval first")
    parts = []
    for label in mine:
        result = compare([other, load_stage(label)], resamples=resamples)
        for split, data in result["splits"].items():
            row = data["comparisons"][0]
            body = []
            for name in result["metrics"]:
                m = row["metrics"].get(name)
                a, b = data["values"][name]
                cell = "-" if m is None else f"{m['diff']:+.4f} [{m['low']:+.4f}, {m['high']:+.4f}]"
                verdict = "" if m is None else html.escape(m["verdict"])
                body.append([name, _num(a), _num(b), cell, f'<span class="{verdict.split(" ")[0]}">{verdict}</span>'])
            title = (f"<h3>{html.escape(label)} - {html.escape(against)}, {split} "
                     f"({row['common_users']} users both hold)</h3>")
            parts.append(title + _table(["metric", "other", "this run", "difference [95% CI]", "verdict"], body,
                                        f'class="paired" data-split="{split}"', escaped_last=True))
    return "\n".join(parts)


def page(state: RunState, against: str | None = None, resamples: int = 2000) -> str:
    figures = plots(state)
    run = html.escape(str(state.run_dir))
    meta = [f"generated {time.strftime('%Y-%m-%d %H:%M')}"]
    if state.rl.steps:
        meta.append(f"RL steps logged: {state.rl.steps[-1]}")
    if state.selection:
        meta.append(f"rl/model: the step {html.escape(str(state.selection.get('step')))} checkpoint, selected by "
                    f"{html.escape(str(state.selection.get('metric')))}")
    body = [f"<h1>gream run report: {run}</h1>", f'<p class="meta">{"; ".join(meta)}</p>']
    if not figures:
        body.append("<p>No RL step logged: nothing to plot.</p>")
    for key, caption, data in figures:
        uri = "data:image/png;base64," + base64.b64encode(data).decode()
        body.append(f'<h2>{caption}</h2><img class="plot" id="plot-{key}" alt="{caption}" src="{uri}">')
    body.append("<h2>Evaluation</h2>" + evaluation_table(state))
    if against:
        body.append(f"<h2>Against {html.escape(against)} (paired per user, 95% bootstrap intervals)</h2>"
                    + paired_tables(state.run_dir, against, resamples))
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>gream report: {run}</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(run_dir: str | Path, out: str | Path | None = None, against: str | None = None,
                 resamples: int = 2000) -> Path:
    """Write the page (default RUN/report.html); returns its path."""
    state = read_run_state(run_dir)
    path = Path(out) if out else state.run_dir / "report.html"
    path.write_text(page(state, against, resamples))
    return path


def _num(value) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:.4f}"


def _table(header: Sequence[str], rows: list[list[str]], attrs: str, escaped_last: bool = False) -> str:
    def cells(row: list[str], tag: str) -> str:
        return "".join(f"<{tag}>{c if escaped_last and i == len(row) - 1 else html.escape(c)}</{tag}>"
                       for i, c in enumerate(row))
    return (f"<table {attrs}><tr>{cells(list(header), 'th')}</tr>"
            + "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows) + "</table>")
