"""`gream teach`'s checks against hand-checked cases: the preference-summary format check, the item
text and teacher requirements of a spec, the choice of users, and SFT refusing (exit 2) teacher data
that is missing or stale, naming the file and `gream teach`. No teacher, no training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cluster.spec import SpecError, load_spec
from cluster.teach_spec import ReasoningSpec, teacher_problem
from gream.cli import main
from indexing.dataset import Example
from indexing.sid import SidIndex
from sft.preference_data import check_summary, select_users
from sft.tasks import item_text_problem, longest_history

REPO = Path(__file__).resolve().parents[2]
OFFICE = REPO / "data/office"
BEAUTY = REPO.parent / "shared/data/beauty"

# Items as SIDs: 1 <a_0><b_0>, 2 <a_0><b_1>, 9 <a_1><b_1>.
TINY = SidIndex({1: (0, 0), 2: (0, 1), 9: (1, 1)})
PROMPT = ("A shopper bought these items, oldest first (semantic ID - title):\n"
          "<a_0><b_0> - Swingline Heavy Duty Stapler Black\n<a_0><b_1> - Post-it Super Sticky Notes Yellow Pack\n\n"
          "In two to four sentences, describe this shopper's preferences.")
GOOD = "This shopper keeps a tidy desk and buys sturdy tools that last, and sticky notes to stay organised."


@pytest.mark.parametrize("reply, reason, kept", [
    (GOOD, "kept", GOOD),
    ("<think>they bought a stapler</think>\n  " + GOOD + "  ", "kept", GOOD),  # the thought is not the summary
    (GOOD + " Next: <a_0><b_1>.", "kept", GOOD + " Next: <a_0><b_1>."),  # a real SID may be cited
    ("   <think>only thoughts</think> ", "empty", None),
    ("Likes staplers and notes.", "too_short", None),  # 4 words
    (" ".join(["word"] * 121), "too_long", None),
    (GOOD + " Next: <a_7><b_7>.", "unknown_sid", None),  # no item has it
    (GOOD + " Also <a_1>.", "unknown_sid", None),  # a prefix is not an item
    ("Swingline Heavy Duty Stapler Black and Post-it Super Sticky Notes Yellow Pack", "copies_prompt", None),  # 8 of 11
    ("Describe this shopper's preferences: a shopper bought these items, oldest first.", "copies_prompt", None),
])
def test_check_summary(reply, reason, kept):
    verdict = check_summary(reply, PROMPT, TINY)
    assert (verdict.reason, verdict.text) == (reason, kept)


def test_a_summary_naming_a_few_title_words_is_not_a_copy():
    # 1 of its 15 word trigrams ("heavy duty stapler") is the prompt's: well under 60%
    reply = "Buys a heavy duty stapler and plenty of bright notes, so likely wants more desk organisers soon."
    assert check_summary(reply, PROMPT, TINY).reason == "kept"


@pytest.mark.parametrize("tasks, reasoning, has_titles, keys", [
    (["seqrec"], False, False, None),
    (["seqrec", "index2item"], True, True, None),
    (["seqrec", "index2item", "preference"], False, False, "sft.tasks ['index2item', 'preference'] needs"),
    (["seqrec"], True, False, "sft.reasoning.enabled needs"),
    (["fusion_sid"], True, False, "sft.tasks ['fusion_sid'] and sft.reasoning.enabled need"),
])
def test_item_text_problem(tasks, reasoning, has_titles, keys):
    problem = item_text_problem(tasks, reasoning, has_titles, "X.item.json is not there")
    assert (problem is None) if keys is None else (problem.startswith(keys) and "X.item.json is not there" in problem)


def test_teacher_problem():
    assert teacher_problem(ReasoningSpec(), ["seqrec"]) is None
    assert teacher_problem(ReasoningSpec(enabled=True, teacher="smollm2"), ["preference"]) is None
    assert "sft.reasoning.enabled needs a teacher" in teacher_problem(ReasoningSpec(enabled=True), ["seqrec"])
    problem = teacher_problem(ReasoningSpec(), ["seqrec", "preference"])
    assert problem.startswith("the 'preference' task in sft.tasks needs a teacher: set sft.reasoning.teacher")
    both = teacher_problem(ReasoningSpec(enabled=True), ["preference"])
    assert both.startswith("sft.reasoning.enabled and the 'preference' task in sft.tasks need a teacher")


@pytest.mark.parametrize("sft, message", [
    ({"reasoning": {"enabled": True}}, "sft.reasoning.enabled needs a teacher: set sft.reasoning.teacher"),
    ({"tasks": ["seqrec", "preference"]}, "'preference' task in sft.tasks needs a teacher"),
    ({"reasoning": {"endpoint": "http://h/v1", "teacher": "smollm2"}}, "teacher 'smollm2' is the offline local engine"),
])
def test_spec_without_a_usable_teacher_is_refused_at_load(tmp_path, sft, message):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "sft": sft}))
    with pytest.raises(SpecError, match=message):
        load_spec(path)


def test_longest_history_and_select_users():
    train = [Example(u, tuple(range(n)), 100 + n) for u in range(6) for n in range(1, 2 + u % 3)]
    longest = longest_history(train)
    assert {u: len(ex.history) for u, ex in longest.items()} == {0: 1, 1: 2, 2: 3, 3: 1, 4: 2, 5: 3}
    assert select_users(train, 10, seed=0) == [longest[u] for u in range(6)]
    picked = select_users(train, 3, seed=1)
    assert len(picked) == 3 and [ex.user for ex in picked] == sorted(ex.user for ex in picked)
    assert picked == select_users(train, 3, seed=1)


def write_spec(tmp_path: Path, **sft) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({
        "name": "teach", "run_dir": str(tmp_path / "run"), "data": {"path": str(OFFICE)},
        "index": {"import_file": str(OFFICE / "Office.unitok5.index.json")}, "cluster": {"device": "cpu"},
        "sft": {"tasks": ["seqrec", "preference"],
                "reasoning": {"endpoint": "http://127.0.0.1:9/v1", "teacher": "t"}, **sft}}))
    return path


def test_sft_without_the_teachers_data_exits_2_naming_the_file_and_gream_teach(tmp_path, capsys):
    path = write_spec(tmp_path)
    assert main(["sft", str(path)]) == 2
    err = capsys.readouterr().err
    assert "teach/preference/summaries.jsonl: not found" in err and f"gream teach {path}" in err
    assert not (tmp_path / "run/sft").exists()  # refused before anything was written


def test_sft_refuses_summaries_written_under_other_settings(tmp_path, capsys):
    from sft.teacher_data import settings_hash

    folder = tmp_path / "run/teach/preference"
    folder.mkdir(parents=True)
    (folder / "summaries.jsonl").write_text(json.dumps({"user": 0, "history": [1], "summary": "s"}) + "\n")
    stale = settings_hash(load_spec(write_spec(tmp_path, preference={"max_users": 7})), "preference")
    (folder / "report.json").write_text(json.dumps({"settings": stale}))
    path = write_spec(tmp_path)
    assert main(["sft", str(path)]) == 2
    assert "written for other data, index or sft.preference / teacher settings" in capsys.readouterr().err


def test_title_tasks_on_data_without_titles_exit_2_before_any_stage(tmp_path, capsys):
    """The GPU recipe on the shared Beauty copy, which has no item text: launch stops before the index stage."""
    if not BEAUTY.is_dir():
        pytest.skip(f"{BEAUTY} is absent (the shared data sets live in ../shared/data beside the repository)")
    run_dir = tmp_path / "run"
    assert main(["launch", str(REPO / "configs/qwen3-4b-beauty.yaml"), "--set", f"run_dir={run_dir}",
                 "--set", f"data.path={BEAUTY}"]) == 2
    err = capsys.readouterr().err
    assert "sft.tasks ['item2index', 'index2item', 'fusion_title', 'fusion_sid', 'preference'] and " \
           "sft.reasoning.enabled need item titles" in err
    assert f"{BEAUTY}/Beauty.item.json is not there" in err and not run_dir.exists()
