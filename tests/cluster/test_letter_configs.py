"""configs/beauty_letter.yaml and configs/instruments_letter.yaml: LETTER IDs on the shared data sets."""
from pathlib import Path

import pytest

from cluster.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {"beauty_letter": "Beauty", "instruments_letter": "Instruments"}


@pytest.mark.parametrize("name", CONFIGS)
def test_letter_config_loads_and_points_at_the_shared_data(name, monkeypatch):
    monkeypatch.chdir(REPO)  # data paths resolve against the working directory: the repository root
    spec = load_spec(REPO / "configs" / f"{name}.yaml")
    assert spec.name == name and spec.data.name == CONFIGS[name]
    assert spec.sft.tasks == ["seqrec"] and spec.index.levels == 4
    assert spec.sasrec.config is None or (REPO / spec.sasrec.config).is_file()  # the tuned teacher ships
    data = Path(spec.data.path)
    if not data.is_dir():
        pytest.skip(f"{data} is absent (the shared data sets live in ../shared/data beside the repository)")
    assert (data / f"{spec.data.name}.inter.json").exists()
    assert Path(spec.index.import_file).exists()
    assert Path(spec.index.import_file).parent == data


@pytest.mark.parametrize("name", CONFIGS)
def test_letter_index_imports_one_to_one_with_a_dedup_level(name, monkeypatch):
    from indexing.dataset import load_from_spec
    from indexing.importer import import_index

    monkeypatch.chdir(REPO)
    spec = load_spec(REPO / "configs" / f"{name}.yaml")
    if not Path(spec.data.path).is_dir():
        pytest.skip(f"{spec.data.path} is absent (the shared data sets live in ../shared/data beside the repository)")
    ds = load_from_spec(spec)
    res = import_index(spec.index.import_file, num_items=ds.num_items)
    assert res.file_depth == spec.index.levels and res.dedup_added
    assert res.index.num_items == ds.num_items and res.index.depth == spec.index.levels + 1
