"""The console log handler (cluster/logs.py) follows sys.stderr as it is when a record comes."""
from __future__ import annotations

import io
import logging
import sys

from cluster.logs import fields, setup_logging


def test_records_go_to_the_stderr_of_their_time_not_a_closed_one(monkeypatch):
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    setup_logging("INFO")
    log = logging.getLogger("gream.test")
    log.info("one", extra=fields(step=1))
    first.close()  # as a test runner closes the capture it had handed out
    monkeypatch.setattr(sys, "stderr", second)
    log.info("two", extra=fields(step=2))
    written = second.getvalue()
    assert "two" in written and "step=2" in written and "one" not in written and "Logging error" not in written
