"""A spec's `base:` key (cluster/spec_base.py): the spec it starts from."""
from pathlib import Path

import pytest

from cluster.spec import SpecError, load_spec
from cluster.spec_base import merged


def test_merged_replaces_key_by_key_in_mappings_and_wholly_elsewhere():
    base = {"a": 1, "s": {"x": 1, "y": [1, 2], "t": {"p": 1, "q": 2}}, "l": [1, 2]}
    own = {"s": {"y": [3], "t": {"q": 5}, "z": None}, "l": [9], "b": 2}
    assert merged(base, own) == {"a": 1, "s": {"x": 1, "y": [3], "t": {"p": 1, "q": 5}, "z": None}, "l": [9], "b": 2}
    assert base["s"]["t"] == {"p": 1, "q": 2}  # the base is not changed in place


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_a_spec_takes_its_base_keys_and_replaces_what_it_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "recipe.yaml", "name: recipe\nsft: {epochs: 7, lr: 0.01, tasks: [seqrec, item2index]}\n"
                                    "data: {name: Office, max_history: 9}\n")
    write(tmp_path / "mid.yaml", "base: recipe.yaml\nsft: {lr: 0.02}\n")
    spec = load_spec(write(tmp_path / "leaf.yaml", "base: mid.yaml\nname: leaf\nsft: {tasks: [seqrec]}\n"),
                     ["sft.epochs=3"])
    assert (spec.name, spec.sft.epochs, spec.sft.lr, spec.sft.tasks) == ("leaf", 3, 0.02, ["seqrec"])
    assert (spec.data.name, spec.data.max_history) == ("Office", 9)


@pytest.mark.parametrize("text,expected", [
    ("base: nowhere.yaml\n", r"leaf\.yaml: key 'base': no spec file at nowhere\.yaml"),
    ("base: [a.yaml]\n", r"leaf\.yaml: key 'base': expected the path of the spec this one starts from, got \['a\.yaml'\]"),
    ("base: leaf.yaml\n", r"leaf\.yaml: key 'base': leaf\.yaml starts a loop of bases"),
    ("base: other.yaml\n", r"other\.yaml: key 'base': leaf\.yaml starts a loop of bases"),
])
def test_a_bad_base_names_the_file_and_the_key(tmp_path, monkeypatch, text, expected):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "other.yaml", "base: leaf.yaml\n")
    with pytest.raises(SpecError, match=expected):
        load_spec(write(tmp_path / "leaf.yaml", text))
    assert (tmp_path / "other.yaml").read_text() == "base: leaf.yaml\n"  # nothing rewritten


def test_a_base_with_malformed_yaml_is_named_in_the_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "recipe.yaml", "sft: {epochs: [1\n")
    with pytest.raises(SpecError, match=r"recipe\.yaml: malformed YAML at line"):
        load_spec(write(tmp_path / "leaf.yaml", "base: recipe.yaml\n"))


def test_an_unknown_key_names_the_spec_and_its_bases(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "recipe.yaml", "sft: {epochz: 3}\n")
    write(tmp_path / "mid.yaml", "base: recipe.yaml\n")
    with pytest.raises(SpecError, match=r"leaf\.yaml \(on base mid\.yaml -> recipe\.yaml\): unknown key 'sft\.epochz'"):
        load_spec(write(tmp_path / "leaf.yaml", "base: mid.yaml\n"))
