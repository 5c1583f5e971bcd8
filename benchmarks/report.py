"""BENCHMARKS.md and its plots (benchmarks/plots/*.png) from the results files alone.

Every benchmark script writes what it measured to benchmarks/results/<name>.json
(benchmarks/results.py). This script renders the summary table, one section per question
(benchmarks/report_sections.py) and the plots (benchmarks/report_plots.py) from those records: a
figure without a record does not appear. A record no section knows is shown as its figures; a
question whose record is missing is listed at the end with the command that measures it.

    python benchmarks/report.py             # rewrite BENCHMARKS.md and benchmarks/plots/
    python benchmarks/report.py --check     # exit 1 when BENCHMARKS.md is not what the records render
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO))
from benchmarks.report_md import Row, anchor, figure, provenance, table, wrap  # noqa: E402
from benchmarks.report_plots import PLOTS, write_plots  # noqa: E402
from benchmarks.report_sections import SECTIONS  # noqa: E402
from benchmarks.results import load_all, results_dir  # noqa: E402

RELIABILITY = Path(__file__).with_name("report_reliability.md")
TITLE = "# Benchmarks"
HOW = """How this file is made: `python benchmarks/report.py` writes it from the results files in
`benchmarks/results/`, which the benchmark scripts write when they finish; each section names its
results file, command, date, commit and machine. To change a figure, run its command again; to
change the words, edit `benchmarks/report_sections.py` and run the report again (a test checks that
this file is what the results render)."""

# Questions whose results file is missing: the command that measures each (and writes the file).
PENDING: dict[str, tuple[str, str]] = {
    "quality_grasp": ("SASRec+GRASP against SASRec on Office (long tail)",
                      "python benchmarks/quality.py --name quality_grasp --names SASRec+GRASP SASRec "
                      "--left runs/quality_grasp/grasp{0,1,2}:baselines/sasrec_grasp "
                      "--right runs/quality_sasrec_last/sasrec{0,1,2}:baselines/sasrec"),
    "quality_flexcode": ("FlexCode against k-means SIDs for SFT on Office (long tail)",
                         "python benchmarks/quality.py --name quality_flexcode --names FlexCode k-means "
                         "--left runs/quality_flexcode/seed{0,1,2}:sft --right runs/quality/seed{0,1,2}:sft"),
    "objectives": ("The tail reward's trade-off between accuracy and the long tail",
                   "python benchmarks/objectives.py --base runs/demo --out runs/objectives --weights 0 0.25 0.5 1 2 "
                   "--seeds 0 1 2"),
    "rl_gain_reserve_screen": ("RL on targets the SFT model never fitted",
                               "python benchmarks/rl_gain.py --name rl_gain_reserve --base runs/reserve "
                               "--out runs/rl_reserve --recipes beam_rank --seeds 0 --set sft.reserve_for_rl=1 "
                               "--set rl.epochs=1 --set rl.steps=400 --screen"),
    "teacher_gate": ("What the teacher knows that the policy does not", "python benchmarks/teacher_gate.py --base runs/demo"),
    "trl_grpo": ("RL step throughput against TRL's GRPOTrainer at equal threads",
                 "python benchmarks/trl_grpo.py --warmup 3 --windows 3 --window-steps 4 --runs 3 --trl-threads 2 "
                 "--gream-variant same-rows:rl.drop_flat_groups=false "
                 "--gream-variant async:rl.max_staleness=1,rl.tis_cap=2.0"),
    "async_rl": ("Asynchronous RL: steps/s at equal validation quality",
                 "python benchmarks/async_rl.py --base runs/demo --out runs/async_rl --staleness 0 1 --repeats 3 "
                 "--seeds 0 1 2 --set rl.steps=8"),
    "scaling": ("RL throughput against rollout workers and learner ranks",
                "python benchmarks/scaling.py --prompts 64 --n 8 --repeats 5"),
    "rl_phases": ("Where an RL step's time goes", "python benchmarks/scaling.py --project runs/demo"),
    "weight_sync": ("Weight push against a raw broadcast of the same bytes (<= 1.5x)",
                    "python benchmarks/weight_sync.py --hidden 512 --layers 8 --repeats 15"),
    "engine_process": ("A CPU rollout engine in its owning process", "python benchmarks/engine_process.py --repeats 3"),
    "rollout": ("Constrained against unconstrained generation (<= 1.05x)",
                "python benchmarks/rollout.py --prompts 64 --n 8 --tokens 7 32 --repeats 3"),
    "reward": ("Reward service throughput, with and without a teacher",
               "python benchmarks/reward.py --modes direct --replicas 1 --n 4096 --repeats 5 "
               "--teacher runs/demo/baselines/sasrec"),
    "trie": ("Trie mask per decoding step against per-row Python (>= 20x)", "python benchmarks/trie.py"),
    "serve": ("gream serve under load", "python benchmarks/serve.py runs/demo --modes direct --requests 256"),
    "sft_ranks": ("SFT over two data-parallel ranks on one machine",
                  "python benchmarks/sft_ranks.py --ranks 2 --epochs 6 --out runs/sft_ranks"),
    "split_drift_beauty": ("How much harder Beauty's last item is, without a model",
                           "python benchmarks/split_drift.py --data ../shared/data/beauty --name Beauty"),
    "letter_quality": ("Beauty and Instruments with LETTER IDs", "python benchmarks/letter_quality.py --seeds 0 1 2"),
    "advantage_compare": ("SRPO against GRPO and Dr.GRPO from one SFT model",
                          "python benchmarks/advantage_compare.py --steps 30 --seeds 0 1 2"),
    "stage_time_reasoning-office": ("The reasoning recipe's stages on Office (index, SFT)",
                                    "python benchmarks/stage_time.py configs/reasoning-office.yaml index sft "
                                    "--out runs/reasoning_time"),
}


def generic(name: str, rec: dict) -> tuple[str, list[Row], str]:
    """A record no section knows: its scalar figures, as they are."""
    title = PENDING.get(name, (f"Results: {name}",))[0]
    flat = list(scalars(rec.get("figures", {})))
    rows = [[key, f"{value:.4g}" if isinstance(value, float) else str(value)] for key, value in flat[:20]]
    more = f" ({len(flat) - 20} more in the results file)" if len(flat) > 20 else ""
    drawn = [figure(path, path) for path, plot in PLOTS.items() if name in plot.needs]
    body = "\n".join([provenance(rec), "", table(["figure", "value"], rows) + more, *([""] + drawn if drawn else [])])
    return title, [Row(title, "-", "-", "-", "measured; no summary rule yet")], body


def scalars(value, prefix: str = ""):
    if isinstance(value, dict):
        for key, v in value.items():
            yield from scalars(v, f"{prefix}{key}" if not prefix else f"{prefix} / {key}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from scalars(v, f"{prefix} / {i}")
    elif isinstance(value, (int, float, str, bool)) or value is None:
        yield prefix, value


def render(records: dict[str, dict]) -> str:
    shown: list[tuple[str, list[Row], str]] = []
    used = set()
    for section in SECTIONS:
        if section.needs in records:
            shown.append((section.title, section.rows(records), section.body(records)))
            used |= {section.needs, *section.uses}
    shown += [generic(name, rec) for name, rec in records.items() if name not in used]
    summary = [[r.question, r.gream, r.alternative, r.difference, r.status, f"[{title}]({anchor(title)})"]
               for title, rows, _ in shown for r in rows]
    parts = [TITLE, "", table(["question", "gream", "the alternative", "difference or ratio [interval]",
                               "status against the target", "section"], summary), "", HOW]
    for title, _, body in shown:
        parts += ["", f"## {title}", "", wrap(body)]
    pending = [(title, cmd) for name, (title, cmd) in PENDING.items() if name not in records]
    if pending:
        parts += ["", "## Not yet measured at the current code", "",
                  wrap("Questions measured before the results files existed, whose figures could not be traced to a "
                       "run output; each command measures it again and writes its results file:"), ""]
        parts += [f"- {title}: `{cmd}`" for title, cmd in pending]
    parts += ["", RELIABILITY.read_text().rstrip()]
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=None, help="the records (default benchmarks/results/)")
    ap.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    ap.add_argument("--plots", type=Path, default=REPO / "benchmarks/plots")
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing; draw nothing")
    args = ap.parse_args(argv)
    records = load_all(args.results or results_dir())
    text = render(records)
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is not what {args.results or results_dir()} renders: run python benchmarks/report.py",
                  file=sys.stderr)
            return 1
        return 0
    for path in write_plots(records, args.plots):
        print(f"plot: {path}")
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
