"""LC-Rec dataset files: loading, validation, splits and statistics.

Files (see data/README in the shared datasets): `NAME.inter.json` maps user id -> time-ordered item
ids, `NAME.item.json` maps item id -> text fields (optional), `NAME.*.index.json` maps item id ->
level-prefixed SID tokens (optional). Every error names the file and the offending key.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cluster.errors import GreamError
from cluster.files import read_text
from cluster.spec import JobSpec


class DataError(GreamError):
    """Unusable dataset files; the CLI turns it into a non-zero exit."""


@dataclass(frozen=True)
class Example:
    user: int
    history: tuple[int, ...]
    target: int


@dataclass
class Split:
    train: list[Example]
    valid: list[Example]
    test: list[Example]


@dataclass
class Dataset:
    name: str
    folder: Path
    sequences: dict[int, list[int]]
    items: dict[int, dict[str, Any]]
    num_items: int
    dropped_users: int = 0
    index_files: list[Path] = field(default_factory=list)

    @property
    def num_interactions(self) -> int:
        return sum(len(s) for s in self.sequences.values())

    def item_text_fields(self, item: int) -> dict[str, Any]:
        return self.items.get(item, {})


def _reject_duplicates(path: Path):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise DataError(f"{path}: duplicate key '{key}'")
            out[key] = value
        return out

    return hook


def read_json(path: Path) -> dict[str, Any]:
    text = read_text(path, DataError, "data file")
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicates(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level must be a JSON object keyed by id, got {type(data).__name__}")
    return data


def _int_key(path: Path, key: str, what: str) -> int:
    if not key.isdigit():
        raise DataError(f"{path}: key '{key}': {what} id must be a non-negative decimal integer")
    return int(key)


def load_sequences(path: Path) -> dict[int, list[int]]:
    raw = read_json(path)
    out: dict[int, list[int]] = {}
    for key, seq in raw.items():
        user = _int_key(path, key, "user")
        if not isinstance(seq, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in seq):
            raise DataError(f"{path}: key '{key}': expected a list of non-negative integer item ids")
        out[user] = seq
    return out


def load_items(path: Path) -> dict[int, dict[str, Any]]:
    raw = read_json(path)
    out: dict[int, dict[str, Any]] = {}
    for key, fields in raw.items():
        item = _int_key(path, key, "item")
        if not isinstance(fields, dict):
            raise DataError(f"{path}: key '{key}': expected an object of text fields")
        out[item] = fields
    return out


def find_index_files(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f"{name}.*.index.json"))


def load_dataset(folder: str | Path, name: str, min_interactions: int = 3, short_users: str = "drop") -> Dataset:
    folder = Path(folder)
    inter_path = folder / f"{name}.inter.json"
    if not inter_path.exists():
        raise DataError(f"{inter_path}: not found (data.path='{folder}', data.name='{name}')")
    sequences = load_sequences(inter_path)
    item_path = folder / f"{name}.item.json"
    items = load_items(item_path) if item_path.exists() else {}

    if items:
        for user, seq in sequences.items():
            missing = [i for i in seq if i not in items]
            if missing:
                raise DataError(f"{inter_path}: key '{user}': item id {missing[0]} is not in {item_path.name}")

    dropped = 0
    for user in [u for u, s in sequences.items() if len(s) < min_interactions]:
        if short_users == "error":
            raise DataError(
                f"{inter_path}: key '{user}': {len(sequences[user])} interactions, "
                f"fewer than data.min_interactions={min_interactions}")
        del sequences[user]
        dropped += 1
    if not sequences:
        raise DataError(f"{inter_path}: no user has at least {min_interactions} interactions")

    seen = max(max(s) for s in sequences.values()) + 1
    num_items = max(seen, max(items) + 1 if items else 0)
    return Dataset(name, folder, sequences, items, num_items, dropped, find_index_files(folder, name))


def _tail(seq: list[int], max_history: int) -> tuple[int, ...]:
    return tuple(seq[-max_history:])


def leave_one_out(ds: Dataset, max_history: int = 20) -> Split:
    """Last item is test, second-to-last valid, every earlier prefix a training target."""
    train, valid, test = [], [], []
    for user in sorted(ds.sequences):
        seq = ds.sequences[user]
        n = len(seq)
        for t in range(1, n - 2):
            train.append(Example(user, _tail(seq[:t], max_history), seq[t]))
        valid.append(Example(user, _tail(seq[: n - 2], max_history), seq[n - 2]))
        test.append(Example(user, _tail(seq[: n - 1], max_history), seq[n - 1]))
    return Split(train, valid, test)


def reserve_latest(train: list[Example], k: int) -> tuple[list[Example], list[Example]]:
    """(kept, reserved): each user's latest `k` training examples set apart (all of a user's, when
    they have at most k), the rest kept; both in the split's order. The split lists a user's examples
    in time order, so the latest are the last ones."""
    if k == 0:
        return list(train), []
    count: dict[int, int] = {}
    for ex in train:
        count[ex.user] = count.get(ex.user, 0) + 1
    seen: dict[int, int] = {}
    kept, reserved = [], []
    for ex in train:
        seen[ex.user] = seen.get(ex.user, 0) + 1
        (reserved if seen[ex.user] > count[ex.user] - k else kept).append(ex)
    return kept, reserved


def temporal(ds: Dataset, max_history: int = 20, ratio: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> Split:
    """MiniOneRec-style 8:1:1 split in time order.

    LC-Rec files carry order but no timestamps, so the ratio cuts each user's time-ordered targets:
    the earliest share trains, the next validates, the latest tests. Histories always hold every
    earlier item, so no evaluation target leaks into a training history after it.
    """
    total = sum(ratio)
    train, valid, test = [], [], []
    for user in sorted(ds.sequences):
        seq = ds.sequences[user]
        targets = len(seq) - 1
        n_test = max(1, round(targets * ratio[2] / total))
        n_valid = max(1, round(targets * ratio[1] / total))
        n_train = targets - n_test - n_valid
        for t in range(1, len(seq)):
            ex = Example(user, _tail(seq[:t], max_history), seq[t])
            k = t - 1
            (train if k < n_train else valid if k < n_train + n_valid else test).append(ex)
    return Split(train, valid, test)


def make_split(ds: Dataset, kind: str, max_history: int, ratio: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> Split:
    if kind == "loo":
        return leave_one_out(ds, max_history)
    if kind == "temporal":
        return temporal(ds, max_history, ratio)
    raise DataError(f"data.split: '{kind}' is not a split; expected 'loo' or 'temporal'")


def load_from_spec(spec: JobSpec) -> Dataset:
    d = spec.data
    return load_dataset(d.path, d.name, d.min_interactions, d.short_users)


def split_from_spec(spec: JobSpec, ds: Dataset | None = None) -> Split:
    ds = ds or load_from_spec(spec)
    return make_split(ds, spec.data.split, spec.data.max_history, spec.data.temporal_ratio)


def has_text(fields: dict[str, Any]) -> bool:
    return any(isinstance(v, str) and v.strip() for v in fields.values())


def stats(ds: Dataset, split: Split | None = None) -> dict[str, Any]:
    lengths = np.array([len(s) for s in ds.sequences.values()])
    pct = {f"p{p}": float(np.percentile(lengths, p)) for p in (5, 25, 50, 75, 95, 99)}
    out: dict[str, Any] = {
        "dataset": ds.name,
        "users": len(ds.sequences),
        "items": ds.num_items,
        "interactions": int(lengths.sum()),
        "dropped_short_users": ds.dropped_users,
        "seq_len_min": int(lengths.min()),
        "seq_len_max": int(lengths.max()),
        "seq_len_mean": round(float(lengths.mean()), 2),
        **{f"seq_len_{k}": v for k, v in pct.items()},
        "items_without_text": sum(1 for i in range(ds.num_items) if not has_text(ds.items.get(i, {}))),
        "index_files": [p.name for p in ds.index_files],
    }
    if split is not None:
        out.update(train_examples=len(split.train), valid_examples=len(split.valid), test_examples=len(split.test))
    return out
