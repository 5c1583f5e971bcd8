"""benchmarks/validation_cost.py reads the validations' seconds from an RL metrics log."""
import json

from benchmarks.validation_cost import validation_seconds


def test_only_validated_steps_count(tmp_path):
    log = tmp_path / "metrics.jsonl"
    rows = [{"step": 0, "time/validate": 3.5}, {"step": 1, "time/validate": None}, {"step": 2},
            {"step": 3, "time/validate": 2.25}]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert validation_seconds(log) == [3.5, 2.25]
