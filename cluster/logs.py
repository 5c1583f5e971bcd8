"""Structured logging: one line per event, `key=value` fields after the message.

Callers pass fields with `log.info("msg", extra={"fields": {...}})`; the file handler (if any)
writes the same events as JSON lines so runs can be grepped or loaded later.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path


class _KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None) or {}
        kv = " ".join(f"{k}={v}" for k, v in fields.items())
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        return f"{ts} {record.levelname:<7} {record.name}: {record.getMessage()}" + (f" | {kv}" if kv else "")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
                 "msg": record.getMessage(), **(getattr(record, "fields", None) or {})}
        return json.dumps(event, default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is when a record comes, not as it was when the handler was made:
    a test runner or notebook that swaps and closes it would otherwise get every later record."""

    def __init__(self):
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr


def setup_logging(level: str = "INFO", json_path: Path | None = None) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    console = _StderrHandler()
    console.setFormatter(_KeyValueFormatter())
    root.addHandler(console)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(json_path)
        file_handler.setFormatter(_JsonFormatter())
        root.addHandler(file_handler)
    # Third-party chatter drowns the job's own progress at INFO.
    for noisy in ("urllib3", "filelock", "httpx", "faiss", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fields(**kv) -> dict:
    """Shorthand: `log.info("done", extra=fields(step=3, secs=1.2))`."""
    return {"fields": kv}
