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
from typing import Any, Iterator

import numpy as np

from cluster.device import resolve
from cluster.spec import JobSpec
from indexing.collaborative import collaborative_vectors, fuse
from indexing.dataset import load_from_spec, split_from_spec
from indexing.dedup import add_dedup_level, collision_stats, reassign_last_level
from indexing.embed import embed_texts, load_encoder
from indexing.importer import import_index
from indexing.kmeans import check_codes, last_level_distances, residual_kmeans
from indexing.rewrite import RewriteCache, make_teacher, rewrite_texts
from indexing.sid import LEVEL_LETTERS, SidIndex
from indexing.text import fuse_catalog

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"


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


def _level_rows(index: SidIndex, semantic_levels: int) -> list[dict[str, Any]]:
    used = index.as_array()
    rows = []
    for level, size in enumerate(index.level_sizes):
        n_used = int(np.unique(used[:, level]).size)
        rows.append({"level": LEVEL_LETTERS[level], "kind": "semantic" if level < semantic_levels else "dedup",
                     "codes": size, "used": n_used, "usage": round(n_used / size, 4)})
    return rows


def _build_kmeans(spec: JobSpec, ds, out_dir: Path, phase: _Phases) -> tuple[SidIndex, dict[str, Any]]:
    ix = spec.index
    check_codes(ds.num_items, ix.codes)  # before minutes of embedding, not after
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
        before = collision_stats(km.codes)
        sizes: tuple[int, ...] = (ix.codes,) * ix.levels
        codes = km.codes
        # Without collisions a dedup level would be one constant token per item: a quarter of every
        # 3-level history spent on nothing, and 14% of the SFT time (BENCHMARKS.md, session 6).
        if before.duplicate_groups and ix.collisions == "reassign":
            codes = reassign_last_level(km.codes, last_level_distances(emb, km))
            info["reassigned_items"] = int((codes[:, -1] != km.codes[:, -1]).sum())
        elif before.duplicate_groups:
            codes = add_dedup_level(km.codes)
            sizes += (int(codes[:, -1].max()) + 1,)
        index = SidIndex.from_array(codes, level_sizes=sizes)
    info["dedup_added"] = index.depth > ix.levels
    info["collisions_before"] = before.as_dict()
    info["items_per_leaf_before_dedup"] = _items_per_prefix(km.codes)
    return index, info


def _build_import(spec: JobSpec, ds, phase: _Phases) -> tuple[SidIndex, dict[str, Any]]:
    with phase("import"):
        res = import_index(spec.index.import_file, num_items=ds.num_items, codes_per_level=spec.index.codes)
    semantic = res.index.as_array()[:, : res.file_depth]
    info = {"import_file": str(res.source), "file_depth": res.file_depth, "dedup_added": res.dedup_added,
            "duplicate_groups_shown": res.duplicates[:10], "collisions_before": res.before.as_dict(),
            "items_per_leaf_before_dedup": _items_per_prefix(semantic)}
    return res.index, info


def run(spec: JobSpec) -> dict[str, Any]:
    """Build (or reuse) the index of `spec`; returns the report and prints its table."""
    out_dir = spec.layout.stage("index")
    report_file = out_dir / REPORT_FILE
    spec_hash = spec.section_hash("data", "index")
    if report_file.exists() and index_path(spec).exists() and vocab_path(spec).exists():
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
    else:
        index, info = _build_kmeans(spec, ds, out_dir, phase)
        semantic_levels = spec.index.levels
    with phase("write"):
        index.save(index_path(spec))
        index.write_vocab(vocab_path(spec))
    report = {
        "spec_hash": spec_hash,
        "dataset": spec.data.name,
        "source": "import" if spec.index.import_file else ("balanced " if spec.index.balanced else "") + "residual k-means",
        "items": index.num_items,
        "depth": index.depth,
        "semantic_levels": semantic_levels,
        "levels": _level_rows(index, semantic_levels),
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
    if "reassigned_items" in report:
        lines.append(f"  {report['reassigned_items']} colliding items moved to free last-level codes")
    lines.append("  seconds: " + " | ".join(f"{k} {v:g}" for k, v in report["seconds"].items()))
    return "\n".join(lines)
