"""Import of ready-made index files (LETTER, UniTok, ...) as a 1:1 `SidIndex`.

The file must give every catalog item one SID, all of the same depth. Items sharing a SID are
reported and resolved with the dedup rule of `indexing.dedup`: one extra level with the item's
ordinal inside its group. A file without duplicates is kept as is.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexing.dedup import CollisionStats, add_dedup_level, collision_stats
from indexing.sid import SidError, SidIndex, read_index_codes

log = logging.getLogger(__name__)


@dataclass
class ImportResult:
    index: SidIndex
    source: Path
    file_depth: int
    before: CollisionStats  # collisions in the file as written
    duplicates: list[list[int]]  # item groups that shared a SID in the file
    dedup_added: bool


def import_index(path: str | Path, num_items: int | None = None, depth: int | None = None,
                 codes_per_level: int | None = None) -> ImportResult:
    """Read `path`; with `num_items`, require SIDs for exactly items 0..num_items-1; with `depth`,
    require that many levels in the file; with `codes_per_level`, every code below it."""
    path = Path(path)
    sids = read_index_codes(path, codes_per_level)
    file_depth = len(next(iter(sids.values())))
    if depth is not None and file_depth != depth:
        raise SidError(f"{path}: SIDs have {file_depth} levels, expected {depth}")
    items = sorted(sids)
    if num_items is not None:
        missing = sorted(set(range(num_items)) - set(items))
        extra = [i for i in items if i >= num_items]
        if missing or extra:
            raise SidError(
                f"{path}: must hold one SID for each of the {num_items} catalog items; "
                f"missing {len(missing)} (first {missing[:5]}), unknown {len(extra)} (first {extra[:5]})")
    codes = np.array([sids[i] for i in items], dtype=np.int64)
    before = collision_stats(codes)
    duplicates: list[list[int]] = []
    if before.duplicate_groups:
        _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        shared = np.nonzero(counts[inverse] > 1)[0]
        by_group: dict[int, list[int]] = {}
        for row in shared:
            by_group.setdefault(int(inverse[row]), []).append(items[row])
        duplicates = sorted(by_group.values(), key=lambda g: (-len(g), g[0]))
        log.warning("%s: %d SIDs are shared by %d items (largest group %d, e.g. items %s); "
                    "adding a dedup level", path, before.duplicate_groups, before.colliding_items,
                    before.largest_group, duplicates[0])
        codes = add_dedup_level(codes)
    index = SidIndex({item: tuple(int(c) for c in row) for item, row in zip(items, codes)})
    return ImportResult(index, path, file_depth, before, duplicates, bool(duplicates))
