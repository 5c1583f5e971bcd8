"""benchmarks/stage_time.py: what a stage says about its own time, and a run folder that already
holds the stage is refused (its cached work would be timed)."""
import json

import pytest

from benchmarks.stage_time import main, median_run, own_timings, stage_command


def test_own_timings_of_the_index_and_sft(tmp_path):
    (tmp_path / "index").mkdir()
    (tmp_path / "index/report.json").write_text(json.dumps({"seconds": {"embed": 27.8, "total": 29.1}, "items": 2420}))
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft/train_summary.json").write_text(json.dumps(
        {"train_secs": 393.0, "tokens_per_s": 18342.5, "selection": {"epoch": 19}, "micro_steps": 5010, "ranks": 1}))
    assert own_timings(tmp_path, "index") == {"seconds": {"embed": 27.8, "total": 29.1}, "items": 2420}
    assert own_timings(tmp_path, "sft") == {"train_secs": 393.0, "tokens_per_s": 18342.5, "selection": {"epoch": 19},
                                            "micro_steps": 5010}


def test_sasrec_timings_and_command(tmp_path):
    (tmp_path / "baselines/sasrec").mkdir(parents=True)
    (tmp_path / "baselines/sasrec/eval.json").write_text(json.dumps(
        {"valid": {}, "test": {}, "meta": {"train_secs": 90.5, "best_epoch": 14, "dataset": "Office"}}))
    assert own_timings(tmp_path, "sasrec") == {"train_secs": 90.5, "best_epoch": 14}
    cmd = stage_command("configs/demo.yaml", "sasrec", tmp_path, [])
    assert cmd[3:6] == ["baseline", "sasrec", "configs/demo.yaml"]
    assert cmd[-4:] == ["--config", "configs/sasrec_office.json", "--seed", "0"]
    bare = stage_command("configs/demo.yaml", "sasrec", tmp_path, ["sasrec.config=null", "sasrec.seed=3"])
    assert "--config" not in bare and bare[-2:] == ["--seed", "3"]  # SASRec's defaults


def test_median_run_keeps_every_run():
    runs = [{"wall_s": 5.0, "train_secs": 300.0}, {"wall_s": 4.0, "train_secs": 100.0}, {"wall_s": 9.0, "train_secs": 200.0}]
    assert median_run(runs) == {"wall_s": 9.0, "train_secs": 200.0, "runs": runs}
    assert median_run([{"wall_s": 3.0}, {"wall_s": 1.0}]) == {"wall_s": 3.0, "runs": [{"wall_s": 3.0}, {"wall_s": 1.0}]}


def test_a_folder_holding_the_stage_is_refused(tmp_path, capsys, results_folder):
    (tmp_path / "index").mkdir()
    with pytest.raises(SystemExit) as stop:
        main(["configs/demo.yaml", "index", "--out", str(tmp_path)])
    assert stop.value.code == 2 and "already holds index" in capsys.readouterr().err
    assert not results_folder.exists()


def test_a_repeat_folder_holding_sasrec_is_refused(tmp_path, capsys, results_folder):
    (tmp_path / "rep1/baselines/sasrec").mkdir(parents=True)
    with pytest.raises(SystemExit) as stop:
        main(["configs/demo.yaml", "sasrec", "--repeats", "2", "--out", str(tmp_path)])
    assert stop.value.code == 2 and "already holds sasrec" in capsys.readouterr().err


def test_the_sft_against_sasrec_row():
    from benchmarks.report_stage_time import stage_rows

    runs = [{"wall_s": 1.0, "train_secs": s} for s in (360.0, 350.0, 370.0)]
    sasrec = [{"wall_s": 1.0, "train_secs": 50.0, "best_epoch": 15}] * 3
    figures = {"sft": median_run(runs), "sasrec": median_run(sasrec), "sft_over_sasrec": [7.2, 7.0, 7.4]}
    (*_, row) = stage_rows({"stage_time_demo": {"figures": figures}})
    assert (row.gream, row.alternative) == ("SFT 360 s", "SASRec 50 s")
    assert row.difference == "7.20x (runs 7.20, 7.00, 7.40)" and row.status == "not met: 3.60x the target"
    figures["sft_over_sasrec"] = [1.9, 2.1, 1.5]
    assert stage_rows({"stage_time_demo": {"figures": figures}})[-1].status == "met"


def test_the_section_reads_one_run_without_repeats():
    from benchmarks.report_stage_time import stage_body

    rec = {"figures": {"sasrec": {"wall_s": 55.0, "train_secs": 50.0, "best_epoch": 14},
                       "sft": {"wall_s": 370.0, "train_secs": 360.0, "tokens_per_s": 2e4, "micro_steps": 5010},
                       "sft_over_sasrec": [7.2]},
           "name": "stage_time_demo", "date": "2026-12-05 00:00", "command": "python benchmarks/stage_time.py", "settings": {}}
    text = stage_body({"stage_time_demo": rec})
    assert "SASRec: 50 s of training (runs 50 s; early stopping chose epochs 14)" in text
    assert "SFT would run 1,392 of its 5,010 steps" in text


def test_bare_prompts_are_compared_with_chat_prompts_by_the_row():
    """Batches of different sizes compare per training row: hand-computed from the two profiles."""
    from benchmarks.report_stage_time import tried

    def profile(name, batch, tokens, forward, teacher, total):
        return {"name": name, "date": "2026-12-06 06:00", "commit": "abc1234",
                "figures": {"batch": batch, "tokens": tokens, "total_ms": total,
                            "ms": {"forward": forward, "teacher": teacher}}}

    text = " ".join(tried({"sft_profile": profile("sft_profile", 64, 1600, 48.0, 12.8, 128.0),
                           "sft_profile_chat": profile("sft_profile_chat", 32, 1440, 32.0, 8.0, 96.0)}))
    assert "25.0 tokens a row against 45.0, 2.00 ms a row against 3.00 (33% less; " in text
    assert "forward with the loss 0.75 against 1.00 ms a row, the teacher 0.20 against 0.25)" in text
    assert tried({"sft_profile": profile("sft_profile", 64, 1600, 48.0, 12.8, 128.0)}) == []
