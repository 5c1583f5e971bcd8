"""benchmarks/sft_profile.py on a real trainer (DeepSpeed on CPU, Office data): every phase is timed
and the operators' shares come from torch's profiler. It runs as a script, in a process of its own: the
process group it forms (RANK, MASTER_PORT in the environment, a store listening) must not outlive it
into the tests' own process and the subprocesses they start."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from benchmarks.results import RESULTS_ENV
from cluster.spec import load_spec
from indexing.build import run as build_index
from tests.sft.test_sft_trainer import OFFICE, REPO

pytestmark = pytest.mark.heavy  # starts DeepSpeed


def test_a_small_spec_profiled(tmp_path, results_folder):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "prof", "run_dir": str(tmp_path / "run"), "data": {"path": str(OFFICE)},
        "index": {"import_file": str(OFFICE / "Office.unitok5.index.json")},
        "model": {"hidden_size": 64, "num_layers": 1, "num_heads": 1, "bpe_vocab": 400},
        "sft": {"batch_size": 8, "max_train_examples": 32, "dropout": 0.2},
        "cluster": {"device": "cpu"}, "logging": {"tensorboard": False}}))
    build_index(load_spec(spec))
    cmd = [sys.executable, "benchmarks/sft_profile.py", str(spec), "--run-dir", str(tmp_path / "run"), "--steps", "3",
           "--warmup", "1", "--profiled", "1"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, RESULTS_ENV: str(results_folder)})
    assert done.returncode == 0, done.stderr[-3000:]
    f = json.loads((results_folder / "sft_profile.json").read_text())["figures"]
    assert set(f["ms"]) == {"collate", "teacher", "forward", "backward", "step"}
    assert all(v >= 0 for v in f["ms"].values()) and f["ms"]["forward"] > 0 and f["ms"]["backward"] > 0
    assert abs(f["total_ms"] - sum(f["ms"].values())) < 1e-9
    assert 0 < sum(f["ops"].values()) <= 1 + 1e-9 and "aten::mm" in f["ops"]
    assert f["steps"] == 3 and f["batch"] == 8 and f["tokens"] > 0
    assert not (tmp_path / "run/sft").exists()  # nothing written into the run folder
