"""`gream index SPEC`: item text -> embeddings (+ collaborative vectors from the training split, when
`index.collaborative.weight` > 0) -> residual k-means -> 1:1 SIDs: where code tuples collide, a
dedup level or (`index.collisions: reassign`) colliding items moved to free last-level codes.

Writes into `<run_dir>/index/`: `NAME.index.json` (LC-Rec layout), `sid_vocab.txt` (every SID token,
read by `sft`), `report.json` (what was built, how well, how long) and `cache/` (embeddings and
teacher rewrites, reused by later runs whatever else changed). A run whose `report.json` carries the
hash of the current `data` and `index` sections, next to its files, is skipped. With
`index.import_file` set, the SIDs come from that file instead (duplicates resolved by the same
dedup rule).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from cluster.device import resolve
from cluster.spec import JobSpec
from indexing.collaborative import collaborative_vectors, fuse
from indexing.dataset import Dataset, Split, load_from_spec, split_from_spec
from indexing.dedup import add_dedup_level, collision_stats, reassign_last_level
from indexing.embed import embed_texts, load_encoder
from indexing.flexcode import (
    FlexcodeError,
    align,
    cf_token_counts,
    compose,
    item_counts,
    last_token_distances,
    match_at_1,
    reconstruct,
)
from indexing.importer import import_index
from indexing.kmeans import check_codes, last_level_distances, level_distances, residual_kmeans
from indexing.neighbours import unit_rows, write_related
from indexing.rewrite import RewriteCache, make_teacher, rewrite_texts
from indexing.segments import training_interactions
from indexing.sid import LEVEL_LETTERS, SidIndex
from indexing.text import fuse_catalog

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"

# (spec, dataset, split) -> [items, dim] item vectors from a model trained on split.train
ItemVectors = Callable[[JobSpec, Dataset, Split], np.ndarray]


def index_path(spec: JobSpec) -> Path:
    return spec.layout.index_file(spec.data.name)


def vocab_path(spec: JobSpec) -> Path:
    return spec.layout.sid_vocab


class _Phases:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)


def _teacher(spec: JobSpec):
    rw = spec.index.rewrite
    return make_teacher(spec, rw.endpoint, rw.model, rw.max_tokens, "index.rewrite")


def _items_per_prefix(codes: np.ndarray) -> dict[str, float]:
    _, counts = np.unique(codes, axis=0, return_counts=True)
    return {"prefixes": int(counts.size), "mean": round(float(counts.mean()), 3),
            "p90": float(np.percentile(counts, 90)), "max": int(counts.max())}


def _level_rows(index: SidIndex, semantic_levels: int, kind: str) -> list[dict[str, Any]]:
    used = index.as_array()
    rows = []
    for level, size in enumerate(index.level_sizes):
        n_used = int(np.unique(used[:, level]).size)
        rows.append({"level": LEVEL_LETTERS[level], "kind": kind if level < semantic_levels else "dedup",
                     "codes": size, "used": n_used, "usage": round(n_used / size, 4)})
    return rows


def _text_embeddings(spec: JobSpec, ds, out_dir: Path, phase: _Phases) -> tuple[np.ndarray, dict[str, Any]]:
    """Unit rows [items, dim] of the encoder over each item's fused (optionally rewritten) text."""
    ix = spec.index
    device = resolve(spec.cluster.device).device_type
    with phase("text"):
        fused = fuse_catalog(ds.items, ds.num_items, ix.text_fields, ix.max_text_chars)
        texts = fused.texts
        info: dict[str, Any] = {"text": fused.summary()}
        if fused.empty_items:
            log.warning("%d items have no text and are described by their id (first: %s)",
                        len(fused.empty_items), fused.empty_items[:5])
    if ix.rewrite.enabled:
        with phase("rewrite"):
            result = rewrite_texts(texts, _teacher(spec), RewriteCache(out_dir / "cache" / "rewrite.jsonl"),
                                   ix.max_text_chars)
            texts = result.texts
            info["rewrite"] = {"from_cache": result.from_cache, "rewritten": result.rewritten,
                               "kept_original": len(result.kept_original)}
    with phase("embed"):
        encoder = load_encoder(ix.encoder, device, ix.embed_dtype)
        emb = embed_texts(texts, encoder, ix.embed_batch_size, out_dir / "cache")
        # Two builds (two machines) that should give the same SIDs can compare this hash of the
        # encoder's float32 output, item order, before anything below changes it.
        info["embedding"] = {"encoder": encoder.name, "dim": int(emb.shape[1]),
                             "dtype": str(encoder.dtype).removeprefix("torch."),
                             "sha256": hashlib.sha256(np.ascontiguousarray(emb).tobytes()).hexdigest()}
        # Unit length: residual k-means then clusters directions, as cosine similarity does.
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb, info


def item_text_embeddings(spec: JobSpec, ds: Dataset) -> np.ndarray:
    """The unit text embeddings the index is built from (teacher-rewritten where index.rewrite is on),
    from the index's cache when the index was built."""
    return _text_embeddings(spec, ds, spec.layout.stage("index"), _Phases())[0]


def built_text_embeddings(spec: JobSpec, ds: Dataset) -> np.ndarray | None:
    """item_text_embeddings where the index stage embedded the items' text (from its cache), for the
    intra-list distance of evaluation; None for an imported index, or before the index is built."""
    if spec.index.import_file or not index_path(spec).exists():
        return None
    return item_text_embeddings(spec, ds)


def _related(spec: JobSpec, emb: np.ndarray, phase: _Phases) -> None:
    with phase("related"):
        write_related(spec.layout.related_items, emb)


def _build_kmeans(spec: JobSpec, ds, out_dir: Path, phase: _Phases) -> tuple[SidIndex, dict[str, Any]]:
    ix = spec.index
    check_codes(ds.num_items, ix.codes)  # before minutes of embedding, not after
    emb, info = _text_embeddings(spec, ds, out_dir, phase)
    _related(spec, emb, phase)
    cf = ix.collaborative
    if cf.weight > 0:
        with phase("collaborative"):
            collab = collaborative_vectors(split_from_spec(spec, ds).train, ds.num_items, cf.dim, cf.window, ix.seed)
            emb = fuse(emb, collab, cf.weight)
            info["collaborative"] = {"weight": cf.weight, "dim": cf.dim, "window": cf.window,
                                     "items_with_signal": int((np.abs(collab).sum(axis=1) > 0).sum())}
    with phase("kmeans"):
        km = residual_kmeans(emb, ix.levels, ix.codes, ix.seed, ix.kmeans_iters, ix.balanced)
        info["residual_mse"] = [round(m, 5) for m in km.residual_mse]
    with phase("dedup"):
        index = _one_to_one(spec, km.codes, (ix.codes,) * ix.levels, lambda: last_level_distances(emb, km), info)
    return index, info


def _one_to_one(spec: JobSpec, codes: np.ndarray, sizes: tuple[int, ...], last_dist: Callable[[], np.ndarray],
                info: dict[str, Any]) -> SidIndex:
    """The index of `codes` after the spec's collision rule; `last_dist()` gives what
    reassign_last_level needs, computed only when a tuple collides."""
    before = collision_stats(codes)
    unique = codes
    # Without collisions a dedup level would be one constant token per item: a quarter of every
    # 3-level history spent on nothing, and 14% of the SFT time (2026-12-01; BENCHMARKS.md at e098204).
    if before.duplicate_groups and spec.index.collisions == "reassign":
        unique = reassign_last_level(codes, last_dist())
        info["reassigned_items"] = int((unique[:, -1] != codes[:, -1]).sum())
    elif before.duplicate_groups:
        unique = add_dedup_level(codes)
        sizes += (int(unique[:, -1].max()) + 1,)
    index = SidIndex.from_array(unique, level_sizes=sizes)
    info["dedup_added"] = index.depth > spec.index.levels
    info["collisions_before"] = before.as_dict()
    info["items_per_leaf_before_dedup"] = _items_per_prefix(codes)
    return index


def _build_flexcode(spec: JobSpec, ds, out_dir: Path, phase: _Phases,
                    cf_vectors: ItemVectors | None) -> tuple[SidIndex, dict[str, Any]]:
    ix, fc = spec.index, spec.index.flexcode
    check_codes(ds.num_items, ix.codes)
    split = split_from_spec(spec, ds)
    counts = item_counts(training_interactions(split.train)[0], ds.num_items)
    n_cf = cf_token_counts(counts, fc.cf_quantiles)
    cf_items = np.flatnonzero(n_cf > 0)
    check_codes(len(cf_items), fc.cf_codes, "index.flexcode.cf_codes",
                "items that get collaborative tokens (lower cf_quantiles give more)")
    if fc.cf_source == "sasrec" and cf_vectors is None:
        raise FlexcodeError("index.flexcode.cf_source: sasrec needs SASRec's item vectors, which `gream index` "
                            "and `gream launch` train (gream/index_stage.py); pass cf_vectors to indexing.build.run")
    emb, info = _text_embeddings(spec, ds, out_dir, phase)
    _related(spec, emb, phase)
    with phase("collaborative"):
        if fc.cf_source == "sasrec":
            vectors = cf_vectors(spec, ds, split)
        else:
            cf = ix.collaborative
            vectors = collaborative_vectors(split.train, ds.num_items, cf.dim, cf.window, ix.seed)
        cf = unit_rows(vectors[cf_items])
        report: dict[str, Any] = {"cf_source": fc.cf_source, "cf_items": int(len(cf_items)), "cf_codes": fc.cf_codes,
                                  "cf_quantiles": fc.cf_quantiles, "vector_dim": int(vectors.shape[1])}
        if fc.align:
            aligned = align(cf, emb[cf_items], fc.align_steps, fc.temperature, ix.seed)
            cf = aligned.vectors
            report["alignment"] = {"loss_start": round(aligned.loss_start, 4), "loss_end": round(aligned.loss_end, 4),
                                   "match_at_1_vectors": round(match_at_1(cf, emb[cf_items]), 4)}
    with phase("kmeans"):
        sem = residual_kmeans(emb, ix.levels, ix.codes, ix.seed, ix.kmeans_iters, ix.balanced)
        collab = residual_kmeans(cf, int(n_cf.max()), fc.cf_codes, ix.seed, ix.kmeans_iters, ix.balanced)
        cf_codes = np.zeros((ds.num_items, collab.codes.shape[1]), dtype=np.int64)
        cf_codes[cf_items] = collab.codes
        codes = compose(cf_codes, sem.codes, n_cf, fc.cf_codes)
        info["residual_mse"] = [round(m, 5) for m in sem.residual_mse]
        report["cf_residual_mse"] = [round(m, 5) for m in collab.residual_mse]
        if fc.align:
            report["alignment"]["match_at_1_reconstructions"] = round(match_at_1(
                reconstruct(collab.codes, collab.centroids), reconstruct(sem.codes, sem.centroids)[cf_items]), 4)
    tokens, users = np.unique(n_cf, return_counts=True)
    report["allocation"] = {int(n): {"items": int(k), "mean_training_interactions": round(float(counts[n_cf == n].mean()), 2)}
                            for n, k in zip(tokens, users)}
    info["flexcode"] = report

    def last_dist() -> np.ndarray:
        cf_dist = []
        for level in range(collab.codes.shape[1]):
            full = np.full((ds.num_items, fc.cf_codes), np.inf, dtype=np.float32)
            full[cf_items] = level_distances(cf, collab, level)
            cf_dist.append(full)
        sem_dist = [level_distances(emb, sem, level) for level in range(ix.levels)]
        return last_token_distances(n_cf, cf_dist, sem_dist, fc.cf_codes)

    with phase("dedup"):
        index = _one_to_one(spec, codes, (fc.cf_codes + ix.codes,) * ix.levels, last_dist, info)
    return index, info


def _build_import(spec: JobSpec, ds, phase: _Phases) -> tuple[SidIndex, dict[str, Any]]:
    with phase("import"):
        res = import_index(spec.index.import_file, num_items=ds.num_items, codes_per_level=spec.index.codes)
    semantic = res.index.as_array()[:, : res.file_depth]
    info = {"import_file": str(res.source), "file_depth": res.file_depth, "dedup_added": res.dedup_added,
            "duplicate_groups_shown": res.duplicates[:10], "collisions_before": res.before.as_dict(),
            "items_per_leaf_before_dedup": _items_per_prefix(semantic)}
    return res.index, info


def run(spec: JobSpec, cf_vectors: ItemVectors | None = None) -> dict[str, Any]:
    """Build (or reuse) the index of `spec`; returns the report and prints its table. `cf_vectors`:
    item vectors of a trained recommender for FlexCode's collaborative codebook (cf_source sasrec)."""
    out_dir = spec.layout.stage("index")
    report_file = out_dir / REPORT_FILE
    spec_hash = spec.section_hash("data", "index")
    built = [index_path(spec), vocab_path(spec)] + ([] if spec.index.import_file else [spec.layout.related_items])
    if report_file.exists() and all(p.exists() for p in built):
        previous = json.loads(report_file.read_text())
        if previous.get("spec_hash") == spec_hash:
            log.info("index artefacts in %s match the spec (hash %s); skipping", out_dir, spec_hash)
            print(format_table(previous))
            return {**previous, "skipped": True}

    start = time.perf_counter()
    phase = _Phases()
    out_dir.mkdir(parents=True, exist_ok=True)
    with phase("load"):
        ds = load_from_spec(spec)
    if spec.index.import_file:
        index, info = _build_import(spec, ds, phase)
        semantic_levels = info["file_depth"]
    elif spec.index.scheme == "flexcode":
        index, info = _build_flexcode(spec, ds, out_dir, phase, cf_vectors)
        semantic_levels = spec.index.levels
    else:
        index, info = _build_kmeans(spec, ds, out_dir, phase)
        semantic_levels = spec.index.levels
    with phase("write"):
        index.save(index_path(spec))
        index.write_vocab(vocab_path(spec))
    report = {
        "spec_hash": spec_hash,
        "dataset": spec.data.name,
        "source": _source(spec),
        "items": index.num_items,
        "depth": index.depth,
        "semantic_levels": semantic_levels,
        "levels": _level_rows(index, semantic_levels, "cf|sem" if spec.index.scheme == "flexcode" else "semantic"),
        "collisions_after": collision_stats(index.as_array()).as_dict(),
        **info,
        "vocab_size": len(index.vocab()),
        "files": {"index": str(index_path(spec)), "vocab": str(vocab_path(spec))},
        "seconds": {**phase.seconds, "total": round(time.perf_counter() - start, 2)},
        "skipped": False,
    }
    tmp = report_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(report_file)
    print(format_table(report))
    return report


def _source(spec: JobSpec) -> str:
    if spec.index.import_file:
        return "import"
    kmeans = ("balanced " if spec.index.balanced else "") + "residual k-means"
    return f"flexcode (collaborative + semantic {kmeans})" if spec.index.scheme == "flexcode" else kmeans


def format_table(report: dict[str, Any]) -> str:
    before, after = report["collisions_before"], report["collisions_after"]
    leaf = report["items_per_leaf_before_dedup"]
    lines = [
        f"index {report['dataset']}: {report['items']} items, {report['source']}, depth {report['depth']} "
        f"-> {report['files']['index']}",
        f"  {'level':<6}{'kind':<10}{'codes':>7}{'used':>7}{'usage':>9}",
    ]
    for row in report["levels"]:
        lines.append(f"  {row['level']:<6}{row['kind']:<10}{row['codes']:>7}{row['used']:>7}{100 * row['usage']:>8.1f}%")
    lines += [
        f"  collision rate: {100 * before['collision_rate']:.2f}% before dedup "
        f"({before['colliding_items']} items in {before['duplicate_groups']} groups, largest group "
        f"{before['largest_group']}), {100 * after['collision_rate']:.2f}% after",
        f"  items per leaf before dedup: mean {leaf['mean']}, p90 {leaf['p90']:g}, max {leaf['max']} "
        f"over {leaf['prefixes']} leaves",
    ]
    if "embedding" in report:
        emb = report["embedding"]  # a reused report from before dtype and hash were recorded lacks them
        lines.append(f"  embeddings: {emb['dim']}-d, {emb.get('dtype', '?')}, sha256 {emb.get('sha256', '?')[:16]}")
    if "flexcode" in report:
        fc = report["flexcode"]
        lines.append("  collaborative tokens per item (FlexCode allocation): " + ", ".join(
            f"{n}: {row['items']} items (mean {row['mean_training_interactions']:g} training interactions)"
            for n, row in fc["allocation"].items()))
        if "alignment" in fc:
            al = fc["alignment"]
            lines.append(f"  alignment: InfoNCE {al['loss_start']:g} -> {al['loss_end']:g}, own text nearest for "
                         f"{100 * al['match_at_1_vectors']:.1f}% of vectors, "
                         f"{100 * al['match_at_1_reconstructions']:.1f}% of reconstructions")
    if "reassigned_items" in report:
        lines.append(f"  {report['reassigned_items']} colliding items moved to free last-level codes")
    lines.append("  seconds: " + " | ".join(f"{k} {v:g}" for k, v in report["seconds"].items()))
    return "\n".join(lines)
