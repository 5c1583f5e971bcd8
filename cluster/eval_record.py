"""What an evaluation leaves in a stage folder: `eval.json` (the metrics per split) and beside it
`ranks.json` (per evaluated example, the user and the rank of the target), one writer and one reader
for every evaluator (`gream eval`, `gream baseline sasrec`), so two models compare user by user.

ranks.json:

    {"depth": 10, "ks": [1, 5, 10],
     "splits": {"valid": {"users": [3, 7, ...], "ranks": [0, -1, ...],
                          "segments": {"head": [1, 0, ...], "tail": [0, 1, ...], ...}}, "test": {...}}}

Answer modes other than direct (eval.modes: reasoning, think_ahead) write the same layout to
`ranks-<mode>.json` beside it (cluster.run_layout.ranks_file), their metrics under eval.json's
"modes" key; `RankRecord.modes` carries them.

`segments` (optional) marks, per example, the long-tail segments it belongs to (indexing.segments:
head / tail items, short / long users), so a comparison can be restricted to one.

`top` (optional) holds each example's top-K item ids (K = max(ks); -1 for an empty slot), `lists`
each example's beyond-accuracy values (sft.beyond_accuracy: tail share, novelty, diversity), and
the top-level `items` the catalogue's size, so a comparison pairs them user by user and bootstraps
coverage, a figure of the whole set of lists, over users. The file is written without indentation:
a program reads it, and the lists would put one number on each line.

Convention: a rank is the 0-based position of the target in the model's ranked list, and -1 when
the target is not among the first `depth` entries. `depth` is the spec's `eval.beam_width`: the
length of the list the generative model's beam returns. A full-ranking model (SASRec) knows every
rank but stores ranks >= depth as -1 too, so that both kinds hold the same information and every
Recall@K / NDCG@K with K <= depth is exact from the file. Users appear in split order; with a
temporal split one user can own several examples of a split.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from cluster.errors import GreamError
from cluster.run_layout import EVAL_FILE, RANKS_FILE, ranks_file

NOT_FOUND = -1


class EvalRecordError(GreamError, ValueError):
    """An eval.json / ranks.json that is missing or malformed; the CLI exits 2 with the message."""


@dataclass(frozen=True)
class SplitRanks:
    users: np.ndarray  # int64 [n], Example.user of each evaluated example, in split order
    ranks: np.ndarray  # int64 [n], 0-based rank of the target, NOT_FOUND beyond the depth
    segments: Mapping[str, np.ndarray] = field(default_factory=dict)  # name -> bool [n]
    top: np.ndarray | None = None  # int64 [n, K], each example's top-K item ids, NOT_FOUND for an empty slot
    lists: Mapping[str, np.ndarray] = field(default_factory=dict)  # beyond-accuracy metric -> float [n]

    def __post_init__(self) -> None:
        if self.users.shape != self.ranks.shape or self.users.ndim != 1:
            raise ValueError(f"users {self.users.shape} and ranks {self.ranks.shape} must be 1-d and of one length")
        for name, mask in self.segments.items():
            if mask.shape != self.users.shape or mask.dtype != bool:
                raise ValueError(f"segment {name!r}: expected {self.users.size} booleans, got {mask.dtype} {mask.shape}")
        if self.top is not None and (self.top.ndim != 2 or len(self.top) != self.users.size):
            raise ValueError(f"top: expected [{self.users.size}, K] item ids, got shape {self.top.shape}")
        for name, values in self.lists.items():
            if values.shape != self.users.shape:
                raise ValueError(f"list metric {name!r}: expected {self.users.size} values, got shape {values.shape}")

    def only(self, segment: str) -> "SplitRanks":
        """The examples of one segment (their segment labels dropped)."""
        mask = self.segments[segment]
        return SplitRanks(self.users[mask], self.ranks[mask], top=None if self.top is None else self.top[mask],
                          lists={name: values[mask] for name, values in self.lists.items()})


@dataclass(frozen=True)
class RankRecord:
    depth: int
    ks: tuple[int, ...]
    splits: dict[str, SplitRanks]
    modes: dict[str, "RankRecord"] = field(default_factory=dict)  # other answer modes' ranks, by mode
    items: int | None = None  # the catalogue's size, coverage's denominator, where splits hold top lists


def cap_ranks(ranks: Sequence[int] | np.ndarray, depth: int) -> np.ndarray:
    """Full ranks -> the stored convention: ranks >= depth (and NOT_FOUND) become NOT_FOUND."""
    ranks = np.asarray(ranks, dtype=np.int64)
    return np.where((ranks >= 0) & (ranks < depth), ranks, NOT_FOUND)


def split_ranks(users: Sequence[int], ranks: Sequence[int] | np.ndarray, depth: int,
                segments: Mapping[str, np.ndarray] | None = None, top: np.ndarray | None = None,
                lists: Mapping[str, np.ndarray] | None = None) -> SplitRanks:
    return SplitRanks(np.asarray(users, dtype=np.int64), cap_ranks(ranks, depth), dict(segments or {}),
                      None if top is None else np.asarray(top, dtype=np.int64), dict(lists or {}))


def _split_json(s: SplitRanks) -> dict:
    out = {"users": s.users.tolist(), "ranks": s.ranks.tolist()}
    if s.segments:
        out["segments"] = {name: mask.astype(int).tolist() for name, mask in s.segments.items()}
    if s.top is not None:
        out["top"] = s.top.tolist()
    if s.lists:
        out["lists"] = {name: values.tolist() for name, values in s.lists.items()}
    return out


def _write_json(path: Path, payload: dict, indent: int | None = 2) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=indent, separators=None if indent else (",", ":")))
    tmp.replace(path)


def _ranks_json(ranks: RankRecord) -> dict:
    out = {"depth": ranks.depth, "ks": list(ranks.ks), "splits": {name: _split_json(s) for name, s in ranks.splits.items()}}
    return out if ranks.items is None else {**out, "items": ranks.items}


def write_eval(folder: Path, result: dict, ranks: RankRecord | None = None) -> Path:
    """Write `eval.json` and, when given, `ranks.json` (and a ranks-<mode>.json per other answer
    mode); rank files left by an earlier evaluation and not written now are removed, as they would
    no longer describe the metrics beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {} if ranks is None else {RANKS_FILE: ranks, **{ranks_file(m): r for m, r in ranks.modes.items()}}
    for stale in [folder / RANKS_FILE, *folder.glob(ranks_file("*"))]:
        if stale.name not in written:
            stale.unlink(missing_ok=True)
    for name, record in written.items():
        _write_json(folder / name, _ranks_json(record), indent=None)
    path = folder / EVAL_FILE
    _write_json(path, result)
    return path


def _load(path: Path) -> dict:
    if not path.exists():
        raise EvalRecordError(f"{path}: not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EvalRecordError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise EvalRecordError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_eval(folder: Path) -> dict:
    return _load(folder / EVAL_FILE)


def _int_list(path: Path, key: str, value: object) -> np.ndarray:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise EvalRecordError(f"{path}: key '{key}' must be a list of integers")
    return np.asarray(value, dtype=np.int64)


def read_ranks(folder: Path, mode: str | None = None) -> RankRecord:
    """ranks.json, or with an answer `mode` other than direct its ranks-<mode>.json."""
    path = folder / ranks_file(mode)
    if not path.exists():
        how = f"with eval.modes holding {mode}" if path.name != RANKS_FILE else "(gream eval / gream baseline sasrec)"
        raise EvalRecordError(f"{path}: no per-user ranks; evaluate again {how} to write them")
    data = _load(path)
    depth, ks, splits = data.get("depth"), data.get("ks"), data.get("splits")
    if not isinstance(depth, int) or depth < 1:
        raise EvalRecordError(f"{path}: key 'depth' must be a positive integer, got {depth!r}")
    ks = _int_list(path, "ks", ks)
    if ks.size == 0 or ks.min() < 1 or ks.max() > depth:
        raise EvalRecordError(f"{path}: key 'ks' must be cut-offs in 1..depth ({depth}), got {ks.tolist()}")
    if not isinstance(splits, Mapping) or not splits:
        raise EvalRecordError(f"{path}: key 'splits' must map split names to users and ranks")
    out = {}
    for name, s in splits.items():
        if not isinstance(s, Mapping):
            raise EvalRecordError(f"{path}: key 'splits.{name}' must hold 'users' and 'ranks'")
        users = _int_list(path, f"splits.{name}.users", s.get("users"))
        ranks = _int_list(path, f"splits.{name}.ranks", s.get("ranks"))
        if users.shape != ranks.shape:
            raise EvalRecordError(f"{path}: key 'splits.{name}': {users.size} users but {ranks.size} ranks")
        bad = (ranks < NOT_FOUND) | (ranks >= depth)
        if bad.any():
            raise EvalRecordError(f"{path}: key 'splits.{name}.ranks': {int(ranks[bad][0])} is outside "
                                  f"{NOT_FOUND}..{depth - 1}")
        out[name] = SplitRanks(users, ranks, _segments(path, name, s.get("segments", {}), users.size),
                               _top(path, name, s.get("top"), users.size), _lists(path, name, s.get("lists", {}), users.size))
    items = data.get("items")
    if items is not None and (not isinstance(items, int) or isinstance(items, bool) or items < 1):
        raise EvalRecordError(f"{path}: key 'items' must be a positive integer, got {items!r}")
    return RankRecord(depth, tuple(ks.tolist()), out, items=items)


def _top(path: Path, split: str, value: object, n: int) -> np.ndarray | None:
    if value is None:
        return None
    key = f"splits.{split}.top"
    rows = [_int_list(path, key, row) for row in value] if isinstance(value, list) else None
    if rows is None or len(rows) != n or len({len(r) for r in rows}) > 1:
        raise EvalRecordError(f"{path}: key '{key}' must hold {n} lists of item ids of one length")
    top = np.array(rows, dtype=np.int64).reshape(n, len(rows[0]) if rows else 0)
    if (top < NOT_FOUND).any():
        raise EvalRecordError(f"{path}: key '{key}': item ids are >= 0, or {NOT_FOUND} for an empty slot")
    return top


def _named(path: Path, split: str, field: str, value: object, what: str, parse) -> dict[str, np.ndarray]:
    """`splits.<split>.<field>`: names -> per-example arrays, each entry read by parse(key, entry)."""
    if not isinstance(value, Mapping):
        raise EvalRecordError(f"{path}: key 'splits.{split}.{field}' must map {what}")
    return {name: parse(f"splits.{split}.{field}.{name}", entry) for name, entry in value.items()}


def _lists(path: Path, split: str, value: object, n: int) -> dict[str, np.ndarray]:
    def numbers(key: str, values: object) -> np.ndarray:
        if not (isinstance(values, list) and len(values) == n and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
            raise EvalRecordError(f"{path}: key '{key}' must hold {n} numbers")
        return np.asarray(values, dtype=np.float64)

    return _named(path, split, "lists", value, "metric names to per-example values", numbers)


def _segments(path: Path, split: str, value: object, n: int) -> dict[str, np.ndarray]:
    def flags(key: str, entry: object) -> np.ndarray:
        entry = _int_list(path, key, entry)
        if entry.size != n or not np.isin(entry, (0, 1)).all():
            raise EvalRecordError(f"{path}: key '{key}' must hold {n} values of 0 or 1")
        return entry.astype(bool)

    return _named(path, split, "segments", value, "segment names to 0/1 lists", flags)
