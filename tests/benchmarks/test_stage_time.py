"""benchmarks/stage_time.py: what a stage says about its own time, and a run folder that already
holds the stage is refused (its cached work would be timed)."""
import json

import pytest

from benchmarks.stage_time import main, own_timings


def test_own_timings_of_the_index_and_sft(tmp_path):
    (tmp_path / "index").mkdir()
    (tmp_path / "index/report.json").write_text(json.dumps({"seconds": {"embed": 27.8, "total": 29.1}, "items": 2420}))
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft/train_summary.json").write_text(json.dumps(
        {"train_secs": 393.0, "tokens_per_s": 18342.5, "selection": {"epoch": 19}, "micro_steps": 5010, "ranks": 1}))
    assert own_timings(tmp_path, "index") == {"seconds": {"embed": 27.8, "total": 29.1}, "items": 2420}
    assert own_timings(tmp_path, "sft") == {"train_secs": 393.0, "tokens_per_s": 18342.5, "selection": {"epoch": 19},
                                            "micro_steps": 5010}


def test_a_folder_holding_the_stage_is_refused(tmp_path, capsys, results_folder):
    (tmp_path / "index").mkdir()
    with pytest.raises(SystemExit) as stop:
        main(["configs/demo.yaml", "index", "--out", str(tmp_path)])
    assert stop.value.code == 2 and "already holds index" in capsys.readouterr().err
    assert not results_folder.exists()
