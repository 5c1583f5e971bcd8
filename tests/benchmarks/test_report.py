"""benchmarks/report.py renders BENCHMARKS.md and the plots from results records alone: from a small
fixture (a table cell, a plot file, a section that is not there without its record), and the
committed BENCHMARKS.md is what benchmarks/results/ renders."""
from __future__ import annotations

import struct

from benchmarks.report import PENDING, main, render
from benchmarks.report_sections import SECTIONS
from benchmarks.results import REPO, write
from benchmarks.scaling import sides

CURVE = {"val_ndcg@10": {"0": 0.05, "10": 0.052}, "reward": {"1": 0.1, "2": 0.2}, "kept_share": {"1": 0.25, "2": 0.5},
         "selected_step": 10, "last_step": 10}
TAIL_FIGURES = {"ndcg@10": 0.05, "tail_share@10": 0.3, "tail recall@10": 0.02, "coverage@10": 0.4}
DIFF = {"diff": 0.002, "low": -0.001, "high": 0.005, "verdict": "no difference"}


def rec(name: str, figures: dict, intervals: dict | None = None, **extra) -> dict:
    return {"name": name, "command": f"python benchmarks/{name}.py", "date": "2026-12-05 10:00", "commit": "abc1234",
            "changed_files": [], "machine": {"cores": 2, "cpu": "a CPU", "memory_gib": 24, "gpus": []},
            "load_before": [0.5, 0.4, 0.3], "model": None, "data": None, "settings": extra,
            "figures": figures, "intervals": intervals or {}}


def fixture() -> list[dict]:
    metrics = {"valid ndcg@10": 0.05, "test ndcg@10": 0.04, "test recall@10": 0.09}
    split = {"users": 100, "metrics": {m: DIFF for m in ("ndcg@10", "recall@10", "recall@5")}}
    side = {"min_s": 1.0, "max_s": 3.0, "runs_s": [1.0, 2.0, 3.0], "metrics": {"recall@10": 0.1, "ndcg@10": 0.05}}
    return [
        rec("rl_gain", {"sft": metrics, "recipes": {name: {"seeds": {"seed0": metrics, "seed1": metrics},
                                                           "median": metrics, "curves": {"seed0": CURVE, "seed1": CURVE}}
                                                    for name in ("ce_anchor", "ce_only")}},
            {name: {"valid": split, "test": split} for name in ("ce_anchor", "ce_only", "ce_anchor - ce_only")}),
        rec("beam_eval", {"users": 1000, "width": 10, "depth": 3, "ranks_identical": 1000, "metrics_agree": True,
                          "profile": ["torch: 2 s"],
                          "sides": {"torch": {**side, "median_s": 2.0, "users_per_s": 500.0},
                                    "hf": {**side, "median_s": 24.6, "min_s": 24.0, "max_s": 25.0,
                                           "users_per_s": 40.65}},
                          "ratio_to_hf": {"torch": {"median": 12.34, "runs": [11.0, 12.34, 13.0]}}}, threads=2),
        rec("weight_sync", {"ratio": 1.44, "push_s": 0.2}),
        rec("engine_process", {"sides": {side: {key: {"median": m * v, "runs": [m * v]} for key, v in
                                                (("start_s", 10.0), ("generate_s", 1.0), ("beam_s", 0.5))}
                                         for side, m in (("vLLM's processes", 2.0), ("in the owning process", 1.0))}},
            hidden=256, layers=4, prompts=64, n=8, width=10, repeats=1),  # no section of its own: shown as its figures
        rec("scaling", {"rollout": sides({1: [1.0, 1.2, 1.1], 2: [0.5, 0.6, 0.55]}, 512),
                        "learner": sides({1: [1.4, 1.5, 1.45], 2: [1.4, 1.5, 1.45]}, 512)},
            prompts=64, n=8, repeats=3, learner_cores=2, workers=["worker 0 on core 0", "worker 1 on core 1"]),
        rec("objectives", {"recipe": "ce_anchor", "objective": "novelty",
                           "chosen": {"weight": "1", "margin": 0.003, "rule": "the rule"},
                           "sft": {s: TAIL_FIGURES for s in ("valid", "test")},
                           "weights": {w: {"figures": {s: TAIL_FIGURES for s in ("valid", "test")}} for w in ("0.5", "1")}},
            {w: {s: {m: DIFF for m in TAIL_FIGURES} for s in ("valid", "test")} for w in ("0.5", "1")}, seeds=[0, 1, 2]),
    ]


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_report_from_a_fixture_has_its_cells_and_plots(results_folder, tmp_path, capsys):
    for r in fixture():
        write(r)
    out, plots = tmp_path / "BENCHMARKS.md", tmp_path / "plots"
    plots.mkdir()
    (plots / "gone.png").write_bytes(b"a plot no record draws any more")
    assert main(["--results", str(results_folder), "--out", str(out), "--plots", str(plots)]) == 0
    text = out.read_text()

    summary = [line for line in text.splitlines() if line.startswith("| constrained beam evaluation")]
    assert len(summary) == 1
    cells = [c.strip() for c in summary[0].strip("|").split("|")]
    assert cells[1:5] == ["torch beam 2.00 s", "HF generate 24.60 s", "12.34x (runs 11.00, 12.34, 13.00)", "met"]
    assert "| ce_anchor - SFT (2 seeds) | +0.0020 [-0.0010, +0.0050] |" in text
    assert "| ce_anchor - ce_only | +0.0020 [-0.0010, +0.0050] |" in text  # a recipe against its control
    assert ("| RL (ce_anchor) beats its equal-compute control (ce_only) on test NDCG@10, every user, paired interval "
            "above 0 | ce_anchor 0.0400 | ce_only 0.0400 | +0.0020 [-0.0010, +0.0050] | not met |") in text
    assert "CE-only control ce_only" in text
    assert "| RL rollout throughput with 2 rollout workers against 1 (each worker its own core) | 2: 931 completions/s " \
           "| 1: 465 completions/s " \
           "| 2.00x (runs 2.00, 2.00, 2.00) | measured |" in text
    assert "| CPU rollout engine in its owning process against vLLM's own processes: engine start | 10.00 s | " \
           "20.00 s | 2.00x faster | measured |" in text
    assert "| ratio | 1.44 |" in text and "## Weight push against a raw broadcast" in text  # the generic section
    assert "python benchmarks/weight_sync.py --hidden" not in text  # measured: no longer pending
    assert PENDING["trie"][1] in text  # not measured: its command is listed, no figure
    assert "## Generate, then re-rank with the teacher" not in text  # no record, no section

    drawn = {p.name for p in plots.iterdir()}
    assert drawn == {"rl_validation.png", "rl_reward.png", "rl_kept.png", "beam_eval.png", "scaling.png",
                     *(f"long_tail_{kind}_{split}.png" for kind in ("share", "recall") for split in ("valid", "test"))}
    assert png_size(plots / "beam_eval.png")[0] > 400
    assert "![Beam evaluation time per user](benchmarks/plots/beam_eval.png)" in text
    assert "![NDCG@10 against tail Recall@10, test](benchmarks/plots/long_tail_recall_test.png)" in text
    tail = next(line for line in text.splitlines() if line.startswith("| the novelty reward"))
    assert tail.endswith("| not met | [Long tail: a tail reward against the SFT model]"
                         "(#long-tail-a-tail-reward-against-the-sft-model) |")

    assert main(["--results", str(results_folder), "--out", str(out), "--check"]) == 0
    out.write_text(text.replace("12.34x", "12.35x"))
    assert main(["--results", str(results_folder), "--out", str(out), "--check"]) == 1
    assert "is not what" in capsys.readouterr().err


def test_every_section_renders_only_with_its_record():
    records = {r["name"]: r for r in fixture()}
    for section in SECTIONS:
        shown = f"## {section.title}\n" in render(records)
        assert shown == (section.needs in records), section.title


def test_the_committed_benchmarks_md_is_what_the_results_render():
    assert main(["--results", str(REPO / "benchmarks/results"), "--out", str(REPO / "BENCHMARKS.md"), "--check"]) == 0
