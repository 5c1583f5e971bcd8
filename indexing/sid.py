"""Semantic-ID codec: item id <-> tuple of codes <-> level-prefixed tokens.

A SID of depth D is D codes, one per level; level l is written with the l-th letter, so code 12 of
level 0 is `<a_12>`. When an index has a dedup level it is simply its last level. Files use the
LC-Rec layout `{"item_id": ["<a_12>", "<b_200>", ...]}` that LC-Rec, LETTER and GREAM read.

A `SidIndex` is always 1:1 (the rewards, the trie and the evaluation map a generated SID back to
exactly one item); files with duplicate SIDs go through `indexing.importer`, which resolves them.
"""
from __future__ import annotations

import json
import re
import string
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from indexing.dataset import DataError, read_json

LEVEL_LETTERS = string.ascii_lowercase
_TOKEN = re.compile(r"<([a-z])_(\d+)>")
_TOKEN_EXACT = re.compile(r"^<([a-z])_(\d+)>$")
MAX_CODE_DIGITS = 18  # every code fits an int64


class SidError(DataError):
    """An index that cannot be used as a 1:1 item <-> SID map."""


def sid_token(level: int, code: int) -> str:
    if not 0 <= level < len(LEVEL_LETTERS):
        raise SidError(f"level {level} out of range: at most {len(LEVEL_LETTERS)} levels have a letter")
    if code < 0:
        raise SidError(f"code {code} of level {level} is negative")
    return f"<{LEVEL_LETTERS[level]}_{code}>"


def parse_sid_token(token: str) -> tuple[int, int]:
    """`<b_200>` -> (1, 200)."""
    m = _TOKEN_EXACT.match(token) if isinstance(token, str) else None
    if m is None:
        raise SidError(f"'{token}' is not a SID token; expected '<letter_code>' such as '<a_12>'")
    if len(m.group(2)) > MAX_CODE_DIGITS:  # int() refuses past 4,300 digits; anything this long is no code
        raise SidError(f"'{token[:16]}...': a code of {len(m.group(2))} digits; expected at most {MAX_CODE_DIGITS}")
    return LEVEL_LETTERS.index(m.group(1)), int(m.group(2))


def split_sid_text(text: str) -> list[str]:
    """All SID tokens in a decoded string, in order (`'<a_1><b_2>'` -> `['<a_1>', '<b_2>']`)."""
    return [m.group(0) for m in _TOKEN.finditer(text)]


def _codes_from_tokens(tokens: object, where: str, codes_per_level: int | None) -> tuple[int, ...]:
    if not isinstance(tokens, list) or not tokens:
        raise SidError(f"{where}: expected a non-empty list of SID tokens, got {tokens!r}")
    codes = []
    for pos, tok in enumerate(tokens):
        try:
            level, code = parse_sid_token(tok)
        except SidError as exc:
            raise SidError(f"{where}: {exc}") from None
        if level != pos:
            raise SidError(
                f"{where}: token {pos + 1} is '{tok}' of level '{LEVEL_LETTERS[level]}'; "
                f"expected level '{LEVEL_LETTERS[pos]}' at that position")
        if codes_per_level is not None and code >= codes_per_level:
            raise SidError(f"{where}: code {code} of level '{LEVEL_LETTERS[level]}' ('{tok}'); "
                           f"expected codes below index.codes={codes_per_level}")
        codes.append(code)
    return tuple(codes)


def read_index_codes(path: str | Path, codes_per_level: int | None = None) -> dict[int, tuple[int, ...]]:
    """Parse an LC-Rec index file into item -> codes, checking ids, token syntax, equal depth and,
    with `codes_per_level`, that every code is below it (before a vocabulary is sized on the codes).

    Duplicates are allowed here; `SidIndex` rejects them and the importer resolves them.
    """
    path = Path(path)
    raw = read_json(path)
    if not raw:
        raise SidError(f"{path}: empty index, expected at least one item")
    out: dict[int, tuple[int, ...]] = {}
    depth = None
    for key, tokens in raw.items():
        if not key.isdigit():
            raise SidError(f"{path}: key '{key}': item id must be a non-negative decimal integer")
        codes = _codes_from_tokens(tokens, f"{path}: key '{key}'", codes_per_level)
        if depth is None:
            depth = len(codes)
        elif len(codes) != depth:
            raise SidError(f"{path}: key '{key}': SID has {len(codes)} levels, earlier items have {depth}")
        out[int(key)] = codes
    return out


def duplicate_groups(sids: dict[int, tuple[int, ...]]) -> list[list[int]]:
    """Groups of items (sorted, size > 1) that share a SID, largest first."""
    by_sid: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for item in sorted(sids):
        by_sid[sids[item]].append(item)
    groups = [g for g in by_sid.values() if len(g) > 1]
    return sorted(groups, key=lambda g: (-len(g), g[0]))


@dataclass
class SidIndex:
    """A 1:1 map item id <-> SID codes.

    `level_sizes[l]` is the number of codes level l may use: the vocabulary holds every code below
    it, so a model trained on this index has a fixed SID vocabulary for a given levels x codes even
    when some codes are unused. It defaults to (max code used + 1) per level.
    """

    sids: dict[int, tuple[int, ...]]
    level_sizes: tuple[int, ...] = ()
    _by_sid: dict[tuple[int, ...], int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.sids:
            raise SidError("an index needs at least one item")
        self.sids = {int(i): tuple(int(c) for c in s) for i, s in self.sids.items()}
        depths = {len(s) for s in self.sids.values()}
        if len(depths) != 1:
            raise SidError(f"all SIDs of an index must have the same depth, got depths {sorted(depths)}")
        depth = depths.pop()
        if depth == 0 or depth > len(LEVEL_LETTERS):
            raise SidError(f"SID depth {depth} out of range 1..{len(LEVEL_LETTERS)}")
        used = np.array(list(self.sids.values()), dtype=np.int64)
        if (used < 0).any():
            raise SidError("SID codes must be non-negative")
        max_used = tuple(int(m) + 1 for m in used.max(axis=0))
        if not self.level_sizes:
            self.level_sizes = max_used
        self.level_sizes = tuple(int(n) for n in self.level_sizes)
        if len(self.level_sizes) != depth:
            raise SidError(f"level_sizes has {len(self.level_sizes)} entries for SIDs of depth {depth}")
        for level, (size, need) in enumerate(zip(self.level_sizes, max_used)):
            if size < need:
                raise SidError(f"level '{LEVEL_LETTERS[level]}' uses code {need - 1} but level_sizes allows {size}")
        dups = duplicate_groups(self.sids)
        if dups:
            shown = "; ".join(f"items {g} share {self.text_of_codes(self.sids[g[0]])}" for g in dups[:3])
            raise SidError(
                f"{len(dups)} SIDs are shared by several items ({shown}); an index must be 1:1 - "
                "resolve them with indexing.importer.import_index (spec key index.import_file)")
        self._by_sid = {s: i for i, s in self.sids.items()}

    @property
    def depth(self) -> int:
        return len(self.level_sizes)

    @property
    def num_items(self) -> int:
        return len(self.sids)

    def items(self) -> list[int]:
        return sorted(self.sids)

    def codes(self, item: int) -> tuple[int, ...]:
        try:
            return self.sids[item]
        except KeyError:
            raise SidError(f"item {item} has no SID in this index ({self.num_items} items)") from None

    def tokens(self, item: int) -> list[str]:
        return [sid_token(level, c) for level, c in enumerate(self.codes(item))]

    def text(self, item: int) -> str:
        """The SID as it appears in prompts and completions: `<a_1><b_2><c_3>`."""
        return "".join(self.tokens(item))

    @staticmethod
    def text_of_codes(codes: Iterable[int]) -> str:
        return "".join(sid_token(level, c) for level, c in enumerate(codes))

    def item_of_codes(self, codes: Sequence[int]) -> int | None:
        return self._by_sid.get(tuple(codes))

    def item_of(self, tokens: Sequence[str] | str) -> int | None:
        """Item named by a SID (token list or `<a_1><b_2>` string); None for unknown or malformed SIDs.

        Model outputs land here, so a malformed SID is a miss, not an exception.
        """
        if isinstance(tokens, str):
            tokens = split_sid_text(tokens)
        if len(tokens) != self.depth:
            return None
        codes = []
        for pos, tok in enumerate(tokens):
            m = _TOKEN_EXACT.match(tok) if isinstance(tok, str) else None
            if m is None or m.group(1) != LEVEL_LETTERS[pos]:
                return None
            codes.append(int(m.group(2)))
        return self._by_sid.get(tuple(codes))

    def as_array(self) -> np.ndarray:
        """Codes as an int64 array [num_items, depth], rows in item order."""
        return np.array([self.sids[i] for i in self.items()], dtype=np.int64)

    def vocab(self) -> list[str]:
        """Every SID token, ordered by level then code."""
        return [sid_token(level, c) for level, size in enumerate(self.level_sizes) for c in range(size)]

    def write_vocab(self, path: str | Path) -> Path:
        """One token per line, the file `sft` adds to the tokenizer."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(self.vocab()) + "\n")
        return path

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {str(i): self.tokens(i) for i in self.items()}
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, level_sizes: Sequence[int] = ()) -> "SidIndex":
        path = Path(path)
        try:
            return cls(read_index_codes(path), tuple(level_sizes))
        except SidError as exc:
            if str(exc).startswith(str(path)):
                raise
            raise SidError(f"{path}: {exc}") from None

    @classmethod
    def from_array(cls, codes: np.ndarray, level_sizes: Sequence[int] = ()) -> "SidIndex":
        """Items 0..n-1 from the rows of an int array [n, depth]."""
        codes = np.asarray(codes)
        if codes.ndim != 2:
            raise SidError(f"codes must be a 2-D array [items, levels], got shape {codes.shape}")
        return cls({i: tuple(int(c) for c in row) for i, row in enumerate(codes)}, tuple(level_sizes))


def read_vocab(path: str | Path) -> list[str]:
    """Read a vocabulary file written by `SidIndex.write_vocab`, validating every line."""
    path = Path(path)
    try:
        lines = path.read_text().split()
    except OSError as exc:
        raise SidError(f"{path}: cannot read SID vocabulary ({exc.strerror})") from exc
    for n, tok in enumerate(lines, 1):
        try:
            parse_sid_token(tok)
        except SidError as exc:
            raise SidError(f"{path}: line {n}: {exc}") from None
    return lines
