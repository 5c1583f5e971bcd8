"""Reading a spec's YAML, and its `base:` key: the spec it starts from. A catalogue's spec that
carries a recipe over names the recipe's spec as its base and says only what differs (its data, its
index, the choices made on its own validation split), so the recipe lives in one file.

`base` is a path like every other path in a spec, read from the working directory. The spec's own
keys replace the base's mapping by mapping; a list or a scalar replaces the base's whole.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from cluster.errors import GreamError
from cluster.files import read_text


def merged(base: dict, own: dict) -> dict:
    """`own` over `base`: where both hold a mapping under a key the two merge, key by key; anything
    else in `own` (a list, a scalar, null) replaces the base's value."""
    out = dict(base)
    for key, value in own.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_raw(path: Path, error: type[GreamError], chain: tuple[Path, ...] = ()) -> tuple[dict, tuple[Path, ...]]:
    """The keys of the spec at `path` over those of the spec its `base:` names, and so on down the
    chain, and the bases read (nearest first), so that a later error on a key can name every file it
    may come from; `error` names the file and the key for a file that is not a mapping, a `base` that
    is not a path to a spec, or a chain that comes back to a spec already in it."""
    source = str(path)
    try:
        raw = yaml.safe_load(read_text(path, error, "spec")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise error(f"{source}: malformed YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(raw, dict):
        raise error(f"{source}: top level must be a mapping of keys, got {type(raw).__name__}")
    if "base" not in raw:
        return raw, ()
    base = raw.pop("base")
    if not isinstance(base, str) or not base.strip():
        raise error(f"{source}: key 'base': expected the path of the spec this one starts from, got {base!r}")
    chain = chain + (path.resolve(),)
    base_path = Path(base)
    if base_path.resolve() in chain:
        names = " -> ".join(str(p) for p in chain + (base_path.resolve(),))
        raise error(f"{source}: key 'base': {base} starts a loop of bases ({names}); a spec cannot start from itself")
    if not base_path.is_file():
        raise error(f"{source}: key 'base': no spec file at {base} (paths in a spec are read from the working "
                    f"directory, {Path.cwd()})")
    below, bases = read_raw(base_path, error, chain)
    return merged(below, raw), (base_path, *bases)
