"""`gream index` with FlexCode's SASRec codebook: SASRec is trained on the Office training split once,
its item vectors cached; bad SASRec settings name the key and exit 2."""
from pathlib import Path

import numpy as np
import pytest

from cluster.errors import BadRequest
from cluster.spec import JobSpec
from gream.index_stage import sasrec_item_vectors
from indexing.dataset import load_from_spec, split_from_spec

ROOT = Path(__file__).resolve().parents[2]


def office_spec(run_dir: Path, sasrec: dict) -> JobSpec:
    return JobSpec(name="office-flexcode", run_dir=str(run_dir), data={"path": str(ROOT / "data/office"), "name": "Office"},
                   index={"scheme": "flexcode", "flexcode": {"sasrec": sasrec}})


def test_sasrec_item_vectors_are_trained_once(tmp_path):
    spec = office_spec(tmp_path, {"hidden": 16, "blocks": 1, "max_epochs": 1, "objective": "shifted"})
    ds = load_from_spec(spec)
    split = split_from_spec(spec, ds)
    first = sasrec_item_vectors(spec, ds, split)
    assert first.shape == (2420, 16) and np.isfinite(first).all()
    cached = list((tmp_path / "index" / "cache").glob("sasrec-items-*.npy"))
    assert len(cached) == 1
    np.testing.assert_array_equal(sasrec_item_vectors(spec, ds, split), first)  # from the cache
    other = office_spec(tmp_path, {"hidden": 16, "blocks": 1, "max_epochs": 1, "objective": "shifted", "seed": 1})
    assert not np.array_equal(sasrec_item_vectors(other, ds, split), first)  # other settings, other file
    assert len(list((tmp_path / "index" / "cache").glob("sasrec-items-*.npy"))) == 2


def test_unknown_sasrec_setting_names_the_key(tmp_path, capsys):
    from gream.cli import main

    spec = office_spec(tmp_path, {"hiden": 16})
    with pytest.raises(BadRequest, match=r"index.flexcode.sasrec.*unknown SASRec settings \['hiden'\]"):
        sasrec_item_vectors(spec, None, None)
    code = main(["index", str(ROOT / "configs/demo.yaml"), "--set", f"run_dir={tmp_path}", "--set", "index.scheme=flexcode",
                 "--set", "index.collaborative.weight=0", "--set", "index.flexcode.sasrec={hiden: 16}"])
    assert code == 2 and "unknown SASRec settings ['hiden']" in capsys.readouterr().err
    assert not (tmp_path / "index" / "Office.index.json").exists()
