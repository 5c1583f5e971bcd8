"""benchmarks/results.py: the record every benchmark script writes."""
from __future__ import annotations

import json
import subprocess

import numpy as np

from benchmarks.results import REPO, fingerprint, load_all, record


def test_record_holds_figures_and_what_they_depend_on(results_folder, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    path = record("demo_bench", {"ratio": np.float64(1.5), "runs": np.array([1.0, float("nan")]), "n": np.int64(3)},
                  script=REPO / "benchmarks/beam_eval.py", argv=["--users", "10"], model=model,
                  data=REPO / "data/office", intervals={"diff": {"low": -0.1, "high": 0.2}})
    assert path == results_folder / "demo_bench.json"
    rec = json.loads(path.read_text())
    assert rec["command"] == "python benchmarks/beam_eval.py --users 10"
    assert rec["figures"] == {"ratio": 1.5, "runs": [1.0, None], "n": 3}  # NaN: a figure that could not be had
    assert rec["intervals"]["diff"]["high"] == 0.2
    assert len(rec["commit"]) == 7 and isinstance(rec["changed_files"], list)
    for name in rec["changed_files"]:  # whole paths: present, or deleted from HEAD's tree
        assert (REPO / name).exists() or subprocess.run(["git", "cat-file", "-e", f"HEAD:{name}"], cwd=REPO).returncode == 0
    assert rec["machine"]["cores"] >= 1 and rec["machine"]["python"].count(".") == 2
    assert len(rec["load_before"]) == 3 and rec["date"][:2] == "20"
    assert rec["data"]["path"] == "data/office" and len(rec["data"]["sha256"]) == 16
    assert load_all(results_folder) == {"demo_bench": rec}


def test_fingerprint_follows_the_bytes_and_the_names(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"123")
    first = fingerprint(folder)["sha256"]
    (folder / "a.bin").write_bytes(b"124")
    second = fingerprint(folder)["sha256"]
    (folder / "a.bin").rename(folder / "b.bin")
    assert len({first, second, fingerprint(folder)["sha256"]}) == 3
    assert fingerprint(tmp_path / "absent") == {"path": str(tmp_path / "absent"), "sha256": None}
    assert fingerprint(None) is None
