"""`gream index` end to end on the real Office catalog (text -> MiniLM -> balanced residual k-means
-> dedup), the skip-when-unchanged rule, k-means on the same embeddings, and the import path."""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cluster.spec import JobSpec
from indexing import build
from indexing.dataset import load_from_spec
from indexing.embed import cached_embeddings
from indexing.kmeans import KMeansError, residual_kmeans
from indexing.sid import SidIndex, read_vocab
from indexing.text import fuse_catalog

pytestmark = pytest.mark.heavy  # starts DeepSpeed, vLLM or a training run

ROOT = Path(__file__).resolve().parents[2]


def office_spec(run_dir: Path, **index) -> JobSpec:
    return JobSpec(name="office-index", run_dir=str(run_dir),
                   data={"path": str(ROOT / "data/office"), "name": "Office"}, index=index)


@pytest.fixture(scope="session")
def office_build(tmp_path_factory):
    """The whole default index build, once per session (about 1-3 min on 2 CPU cores)."""
    spec = office_spec(tmp_path_factory.mktemp("office_run"))
    return spec, build.run(spec)


def test_office_build_is_collision_free_and_balanced(office_build, capsys):
    spec, report = office_build
    assert not report["skipped"] and report["items"] == 2420 and report["depth"] == 4
    assert [r["kind"] for r in report["levels"]] == ["semantic"] * 3 + ["dedup"]
    assert all(r["usage"] >= 0.9 for r in report["levels"][:3])
    assert report["collisions_after"]["collision_rate"] == 0.0
    assert report["collisions_before"]["largest_group"] == report["levels"][3]["codes"]
    assert set(report["seconds"]) >= {"load", "text", "embed", "kmeans", "dedup", "write", "total"}
    assert report["text"]["empty_items"] == 0 and report["embedding"]["dim"] == 384
    assert report["embedding"]["dtype"] == "float32"  # the default on every CPU, bf16 or not

    index = SidIndex.load(build.index_path(spec))
    assert index.num_items == 2420 and index.depth == 4
    vocab = read_vocab(build.vocab_path(spec))
    assert vocab[:2] == ["<a_0>", "<a_1>"] and len(vocab) == 3 * 256 + report["levels"][3]["codes"]
    assert set(vocab) >= {t for i in index.items() for t in index.tokens(i)}
    on_disk = json.loads((spec.layout.stage("index") / "report.json").read_text())
    assert on_disk["spec_hash"] == spec.section_hash("data", "index")

    # Same spec again: nothing is rebuilt, the table is printed from the stored report.
    again = build.run(spec)
    assert again["skipped"] and again["spec_hash"] == report["spec_hash"]
    assert "collision rate" in capsys.readouterr().out


def test_changed_index_settings_rebuild_but_reuse_embeddings(office_build, tmp_path):
    spec, report = office_build
    shutil.copytree(spec.layout.stage("index") / "cache", tmp_path / "index" / "cache")
    changed = office_spec(tmp_path, codes=64, levels=2, collaborative={"weight": 0.5, "dim": 32})
    rebuilt = build.run(changed)
    assert not rebuilt["skipped"] and rebuilt["depth"] == 3
    assert rebuilt["seconds"]["embed"] < report["seconds"]["embed"] / 3  # served from the cache
    assert rebuilt["collisions_after"]["collision_rate"] == 0.0
    # Co-occurrence vectors from the training split were mixed in: nearly every item has some.
    assert rebuilt["collaborative"]["dim"] == 32 and rebuilt["collaborative"]["items_with_signal"] > 2300
    assert "collaborative" in rebuilt["seconds"] and "collaborative" not in report["seconds"]


def test_same_spec_builds_the_same_files_twice(office_build, tmp_path):
    spec, report = office_build
    # The second build reads the first one's embeddings from the cache (encoding them again would
    # double this module's minutes); what follows them, fused text to written files, runs again.
    shutil.copytree(spec.layout.stage("index") / "cache", tmp_path / "index" / "cache")
    again = office_spec(tmp_path)
    rebuilt = build.run(again)
    assert not rebuilt["skipped"]
    for path in (build.index_path, build.vocab_path):
        assert path(again).read_bytes() == path(spec).read_bytes()
    timeless = {"seconds", "files"}
    assert {k: v for k, v in rebuilt.items() if k not in timeless} == {k: v for k, v in report.items() if k not in timeless}
    # The recorded hash is that of the embedding matrix, so two machines' reports can be compared.
    emb = office_embeddings(spec, report)
    assert report["embedding"]["sha256"] == hashlib.sha256(emb.tobytes()).hexdigest()


def test_no_dedup_level_when_no_code_tuple_collides(office_build, tmp_path):
    spec, report = office_build
    assert report["dedup_added"]  # 3 x 256 leaves collisions on Office: the dedup level is there
    shutil.copytree(spec.layout.stage("index") / "cache", tmp_path / "index" / "cache")
    # 4 x 512 codes over 2,420 items: no two items share all four. float32 pinned: these codes are
    # those of the float32 embeddings (bf16 rounding, which differs per CPU, moves items).
    demo = office_spec(tmp_path, codes=512, levels=4, collaborative={"weight": 0.5}, embed_dtype="float32")
    built = build.run(demo)
    assert built["collisions_before"]["duplicate_groups"] == 0 and not built["dedup_added"]
    assert built["depth"] == 4 and [r["kind"] for r in built["levels"]] == ["semantic"] * 4
    index = SidIndex.load(build.index_path(demo))
    assert index.depth == 4 and len(set(map(index.text, index.items()))) == 2420
    assert not any(t.startswith("<e_") for t in read_vocab(build.vocab_path(demo)))  # no fifth (dedup) level


def office_embeddings(spec, report) -> np.ndarray:
    ds = load_from_spec(spec)
    texts = fuse_catalog(ds.items, ds.num_items, spec.index.text_fields, spec.index.max_text_chars).texts
    return cached_embeddings(texts, report["embedding"]["encoder"], spec.layout.stage("index") / "cache")


def test_residual_kmeans_on_office_embeddings(office_build):
    x = office_embeddings(*office_build)
    assert x.shape == (2420, 384)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    a = residual_kmeans(x, levels=2, n_codes=64, seed=3, iters=10, balanced=True)
    b = residual_kmeans(x, levels=2, n_codes=64, seed=3, iters=10, balanced=True)
    np.testing.assert_array_equal(a.codes, b.codes)  # seeded and deterministic
    counts = np.bincount(a.codes[:, 0], minlength=64)
    assert counts.max() <= int(np.ceil(2420 / 64)) and min(a.usage) >= 0.9
    # Each level removes part of what is left to explain.
    assert a.residual_mse[1] < a.residual_mse[0] < 1.0
    plain = residual_kmeans(x, levels=2, n_codes=64, seed=3, iters=10, balanced=False)
    assert np.bincount(plain.codes[:, 0], minlength=64).max() > counts.max()


def test_import_build_from_unitok_file(tmp_path):
    spec = office_spec(tmp_path, import_file=str(ROOT / "data/office/Office.unitok5.index.json"))
    report = build.run(spec)
    assert report["source"] == "import" and report["depth"] == 6 and report["dedup_added"]
    assert report["collisions_before"]["unique_sids"] == 1006
    assert report["collisions_after"]["collision_rate"] == 0.0
    assert report["items_per_leaf_before_dedup"]["max"] == 39
    assert SidIndex.load(build.index_path(spec)).num_items == 2420


def test_too_many_codes_fails_before_any_work(tmp_path):
    with pytest.raises(KMeansError, match=r"index.codes=1024 is too large for 2420 items.*index.codes <= 605"):
        build.run(office_spec(tmp_path, codes=1024))
    assert not (tmp_path / "index" / "cache").exists()


def test_reassign_keeps_every_sid_three_codes_long(office_build, tmp_path):
    spec, report = office_build
    shutil.copytree(spec.layout.stage("index") / "cache", tmp_path / "index" / "cache")
    built = build.run(office_spec(tmp_path, collisions="reassign"))  # 3 x 256 collides (see above)
    groups = report["collisions_before"]["duplicate_groups"]
    assert built["collisions_before"] == report["collisions_before"] and groups > 0
    assert built["depth"] == 3 and not built["dedup_added"] and built["collisions_after"]["collision_rate"] == 0.0
    # One item of each group keeps its tuple; the others move inside their prefix.
    assert built["reassigned_items"] == report["collisions_before"]["colliding_items"] - groups
    moved = SidIndex.load(build.index_path(office_spec(tmp_path))).as_array()
    kept = SidIndex.load(build.index_path(spec)).as_array()[:, :3]
    assert (moved[:, :2] == kept[:, :2]).all() and int((moved[:, 2] != kept[:, 2]).sum()) == built["reassigned_items"]


def test_cli_names_a_reassignment_that_cannot_work(office_build, tmp_path, capsys):
    from gream.cli import main

    spec, _ = office_build
    shutil.copytree(spec.layout.stage("index") / "cache", tmp_path / "index" / "cache")
    # One level: every item shares the empty prefix and 2,420 items cannot fit 512 codes.
    code = main(["index", str(ROOT / "configs/demo.yaml"), "--set", f"run_dir={tmp_path}", "--set", "index.levels=1",
                 "--set", "index.collisions=reassign"])
    assert code == 2
    assert "CollisionError: index.collisions: reassign: prefix [] holds more items" in capsys.readouterr().err
    assert not (tmp_path / "index" / "Office.index.json").exists()


def test_flexcode_on_office(office_build, tmp_path):
    """Two codebooks on the real catalog: every item 1:1 at three tokens, collaborative and semantic
    codes disjoint, more collaborative tokens for more popular items, alignment better than chance."""
    from indexing.dataset import split_from_spec
    from indexing.flexcode import cf_token_counts, item_counts
    from indexing.segments import training_interactions

    spec, _ = office_build
    shutil.copytree(spec.layout.stage("index") / "cache", tmp_path / "index" / "cache")
    fc = office_spec(tmp_path, codes=256, collisions="reassign", scheme="flexcode",
                     flexcode={"cf_source": "cooccurrence", "cf_codes": 128, "align_steps": 100})
    built = build.run(fc)
    assert built["source"].startswith("flexcode") and built["depth"] == 3 and not built["dedup_added"]
    assert built["collisions_after"]["collision_rate"] == 0.0
    index = SidIndex.load(build.index_path(fc))
    assert index.num_items == 2420 and len(set(map(index.text, index.items()))) == 2420
    assert index.level_sizes == (128 + 256,) * 3 and len(read_vocab(build.vocab_path(fc))) == 3 * 384

    ds = load_from_spec(fc)
    counts = item_counts(training_interactions(split_from_spec(fc, ds).train)[0], ds.num_items)
    n_cf = cf_token_counts(counts, [0.5, 0.8])
    codes = index.as_array()
    for row, n in zip(codes, n_cf):
        assert (row[:n] < 128).all() and (row[n:] >= 128).all()
    allocation = built["flexcode"]["allocation"]
    assert sum(a["items"] for a in allocation.values()) == 2420
    assert {int(n): a["items"] for n, a in allocation.items()} == dict(zip(*map(list, np.unique(n_cf, return_counts=True))))
    means = [allocation[n]["mean_training_interactions"] for n in sorted(allocation)]
    assert means == sorted(means) and len(means) == 3  # popular items hold the collaborative tokens
    al = built["flexcode"]["alignment"]
    chance = 1 / built["flexcode"]["cf_items"]
    assert al["loss_end"] < al["loss_start"] and al["match_at_1_vectors"] > 50 * chance
    assert al["match_at_1_reconstructions"] > 10 * chance
    # Each item's ten most text-similar other items, for sft.retrieved_items.
    related = np.load(fc.layout.related_items)
    assert related.shape == (2420, 10) and not (related == np.arange(2420)[:, None]).any()
    assert "related" in built["seconds"]
