"""What the two kinds of teacher data (reasoning records, preference summaries) share: asking the
teacher through the append-only cache, counting what the format checks kept and dropped, and
writing the kept rows and `report.json` under `<run_dir>/teach/<kind>/`, stamped with the settings
they were written under so that SFT can tell stale files from current ones.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from cluster.errors import MissingArtefact
from cluster.files import save_text
from cluster.logs import fields
from cluster.spec import JobSpec
from indexing.rewrite import RewriteCache, Teacher, ask_cached

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"
CACHE_FILE = "teacher_cache.jsonl"
KEPT = "kept"
OVERSIZED = "oversized"
CHARS_PER_TOKEN = 16  # above any real vocabulary's mean token length (English text: about 4)


@dataclass(frozen=True)
class Verdict:
    text: str | None  # what is kept; None when dropped
    reason: str  # KEPT or why the reply was dropped


def judged(replies: Sequence[str], max_tokens: int, check: Callable[..., Verdict]) -> Verdict:
    """`check(*replies)`, unless a reply is longer than `max_tokens` tokens can spell
    (CHARS_PER_TOKEN each): it is dropped as OVERSIZED before any regular expression reads it. A
    format check's cost can grow with the square of the text, and the cache holds whatever an
    endpoint that ignored max_tokens sent."""
    if any(len(r) > CHARS_PER_TOKEN * max_tokens for r in replies):
        return Verdict(None, OVERSIZED)
    return check(*replies)


def ask(kind: str, prompts: Sequence[str], teacher: Teacher, out_dir: Path, batch_size: int) -> tuple[list[str], int]:
    """The teacher's reply to every prompt and how many were sent (the rest came from the cache). The
    key names the teacher and the whole prompt: change the example, its context or the wording, and it
    is asked afresh."""
    cache = RewriteCache(out_dir / CACHE_FILE)
    keys = [hashlib.sha256(f"{teacher.name}\0{p}".encode()).hexdigest() for p in prompts]
    asked = ask_cached(keys, prompts, teacher, cache, batch_size, desc=kind)
    return [cache.entries[k] for k in keys], asked


def settings_hash(spec: JobSpec, kind: str) -> str:
    """What the kind's files depend on: the data and index, the teacher, the kind's own settings, and
    the SFT seed and reservation that choose its examples."""
    s = spec.sft
    blob = json.dumps({"sections": spec.section_hash("data", "index"), "teacher": [s.reasoning.teacher, s.reasoning.endpoint],
                       "settings": getattr(s, kind).model_dump(mode="json"), "seed": s.seed,
                       "reserve_for_rl": s.reserve_for_rl}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write(spec: JobSpec, kind: str, teacher: Teacher, out_dir: Path, rows_file: str, rows: list[dict],
          verdicts: Sequence[Verdict], asked: int, prompts: int | None = None, **extra) -> dict:
    """Write the kept rows (one JSON object a line) and `report.json`; returns the report. Every
    example is either kept or dropped for exactly one reason, so kept + dropped == examples.
    `prompts`: the prompts behind the verdicts, when an example took several (default: one each)."""
    reasons = Counter(v.reason for v in verdicts)
    kept = reasons.pop(KEPT, 0)
    if kept != len(rows):
        raise ValueError(f"{kept} replies kept but {len(rows)} rows to write")
    report = {"kind": kind, "teacher": teacher.name, "examples": len(verdicts), "asked": asked,
              "from_cache": (prompts or len(verdicts)) - asked, "kept": kept, "dropped": sum(reasons.values()),
              "dropped_by_reason": dict(sorted(reasons.items())), **extra, "settings": settings_hash(spec, kind)}
    out_dir.mkdir(parents=True, exist_ok=True)
    # The report goes first and comes back last: a rows file without its report is one a crash cut
    # short, and each file is renamed into place whole, so no reader sees new rows beside an old report.
    (out_dir / REPORT_FILE).unlink(missing_ok=True)
    save_text(out_dir / rows_file, "".join(json.dumps(row) + "\n" for row in rows))
    save_text(out_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    log.info("teacher data", extra=fields(**{k: v for k, v in report.items() if k != "dropped_by_reason"},
                                          **{f"dropped_{k}": v for k, v in reasons.items()}))
    if verdicts and not kept:
        log.warning("the teacher's replies were all dropped (%s); see %s", dict(reasons), out_dir / REPORT_FILE)
    return report


def read(spec: JobSpec, kind: str, out_dir: Path, rows_file: str) -> list[dict]:
    """The rows `write` left, for SFT; missing, or written under other settings, is a MissingArtefact
    (exit 2) naming the file and the command that writes it."""
    report_path, rows_path = out_dir / REPORT_FILE, out_dir / rows_file
    fix = f"run `gream teach {spec.source or 'SPEC'}` (or add teach before sft in stages)"
    if not report_path.exists() or not rows_path.exists():
        missing = rows_path if not rows_path.exists() else report_path
        raise MissingArtefact(f"{missing}: not found; SFT needs the teacher's {kind} data: {fix}")
    try:
        written = json.loads(report_path.read_text()).get("settings")
    except json.JSONDecodeError as exc:
        raise MissingArtefact(f"{report_path}: unreadable ({exc.msg}); {fix}") from exc
    if written != settings_hash(spec, kind):
        raise MissingArtefact(f"{rows_path}: written for other data, index or sft.{kind} / teacher settings than "
                              f"this spec's; {fix} (cached replies are not asked again)")
    return [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
