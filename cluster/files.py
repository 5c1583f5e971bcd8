"""Reading the text files a user hands in (specs, data, index files) without a traceback, and
writing arrays and text files whole."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cluster.errors import GreamError


def read_text(path: Path, error: type[GreamError], what: str) -> str:
    """`path` decoded as UTF-8 whatever the locale, or `error` naming the file and, for bytes that
    are not UTF-8, where the first one is (a Latin-1 export is the usual culprit)."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        line = exc.object.count(b"\n", 0, exc.start) + 1
        raise error(f"{path}: {what} is not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at line {line} "
                    f"(offset {exc.start}); save it as UTF-8") from exc


def save_array(path: Path, array: np.ndarray) -> Path:
    """`array` as `path` (.npy), renamed into place: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)
    return path


def save_text(path: Path, text: str) -> Path:
    """`text` as `path`, renamed into place: a reader sees the old file or the new one, never part."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
