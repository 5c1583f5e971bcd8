"""`gream teach` against a teacher endpoint that misbehaves, on real Office data and real local HTTP
servers: a reply that is not UTF-8 JSON ends the stage with its own error (exit 2), replies longer
than max_tokens can spell are dropped before the format checks' regular expressions read them, and
the kept rows and their report are replaced whole, the report last."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from cluster.errors import MissingArtefact
from cluster.spec import JobSpec, dump_spec
from gream.cli import main
from indexing.build import run as build_index
from indexing.rewrite import EndpointTeacher
from sft import teach, teacher_data
from sft.teacher_data import CHARS_PER_TOKEN, KEPT, Verdict
from tests.chat_server import ChatServer
from tests.hostile_http import raw_server, send

OFFICE = Path(__file__).resolve().parents[2] / "data/office"
MAX_TOKENS = 16  # the least the spec allows: replies over 16 * 16 characters are oversized
EXAMPLES, USERS = 4, 3


def spec_for(run_dir: Path, endpoint: str) -> JobSpec:
    teacher = {"enabled": True, "endpoint": endpoint, "teacher": "m", "max_examples": EXAMPLES, "max_tokens": MAX_TOKENS}
    return JobSpec(name="hostile-teacher", run_dir=str(run_dir), data={"path": str(OFFICE)},
                   index={"import_file": str(OFFICE / "Office.unitok5.index.json")},
                   sft={"reasoning": teacher, "tasks": ["seqrec", "preference"],
                        "preference": {"max_users": USERS, "max_tokens": MAX_TOKENS}},
                   cluster={"device": "cpu"}, logging={"tensorboard": False})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile-teacher")
    build_index(spec_for(root, "http://127.0.0.1:9/v1"))
    return root


def test_a_reply_that_is_not_utf8_ends_gream_teach_with_exit_2(run_dir, capsys):
    with raw_server(lambda h: send(h, b'{"choices": [{"message": {"content": "caf\xe9"}}]}')) as server:
        spec_file = run_dir / "spec-latin1.yaml"
        spec_file.write_text(dump_spec(spec_for(run_dir, server.url + "/v1")))
        assert main(["teach", str(spec_file)]) == 2
    err = capsys.readouterr().err
    assert f"gream: RewriteError: {server.url}/v1/chat/completions: reply is not JSON text" in err
    assert "Traceback" not in err


def long_reply(prompt: str) -> str:
    """A reply each format check would keep, but longer than MAX_TOKENS tokens can spell."""
    padding = "The shopper keeps a tidy desk and buys sturdy tools that last for years. " * 5
    assert len(padding) > CHARS_PER_TOKEN * MAX_TOKENS
    if "<answer>" not in prompt:  # a preference summary
        return padding
    target = re.findall(r"<answer>(.*?)</answer>", prompt)[-1]
    cited = re.match(r"(?:<[a-z]_\d+>)+", prompt.splitlines()[1]).group(0)  # the first history item shown
    return f"1. Evidence: the shopper bought {cited}.\n{padding}\n<answer>{target}</answer>"


def test_replies_longer_than_max_tokens_allow_are_dropped_before_the_format_checks(run_dir):
    with ChatServer(long_reply) as server:
        spec = spec_for(run_dir, server.url)
        reports = teach.run(spec, batch_size=4)
    assert reports["reasoning"]["dropped_by_reason"] == {"oversized": EXAMPLES}
    assert reports["preference"]["dropped_by_reason"] == {"oversized": USERS}


def test_rows_and_report_are_replaced_whole_the_report_last(run_dir):
    spec = spec_for(run_dir, "http://127.0.0.1:9/v1")
    out, teacher = run_dir / "written", EndpointTeacher("http://127.0.0.1:9/v1", "m", MAX_TOKENS)
    rows = [{"user": 1, "summary": "one"}, {"user": 2, "summary": "two"}]
    teacher_data.write(spec, "preference", teacher, out, "rows.jsonl", rows, [Verdict("x", KEPT)] * 2, asked=2)
    assert teacher_data.read(spec, "preference", out, "rows.jsonl") == rows
    written = (out / "rows.jsonl").read_bytes()
    broken = [{"user": 3, "summary": "three"}, {"user": 4, "summary": object()}]  # fails half way through
    with pytest.raises(TypeError):
        teacher_data.write(spec, "preference", teacher, out, "rows.jsonl", broken, [Verdict("x", KEPT)] * 2, asked=2)
    assert (out / "rows.jsonl").read_bytes() == written  # not cut short
    assert sorted(p.name for p in out.iterdir()) == ["rows.jsonl"]  # no report: the rows are not current
    with pytest.raises(MissingArtefact, match="report.json: not found"):
        teacher_data.read(spec, "preference", out, "rows.jsonl")
