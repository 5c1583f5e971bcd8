"""Text fusion: one cleaned, truncated description per item from its text fields.

Amazon metadata mixes HTML fragments, entities, lists of category paths and review lists; each
field is flattened and cleaned, then joined as `Title: ... Brand: ... Description: ...` in the
order of `index.text_fields`. An item without a title is described by the fields it has; an
item without any text by its id. Both are counted, because SIDs of text-less items carry no
semantics and the report should say how many there are.
"""
from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Sequence

_TAG = re.compile(r"<[^>]{0,200}>")
_SPACE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?])")
_MAX_REVIEWS = 3  # GREAM keeps the top reviews; more mostly repeats the same praise


@dataclass
class FusedCatalog:
    texts: list[str]  # texts[item], items 0..n-1
    untitled_items: list[int] = field(default_factory=list)  # described by their other fields
    empty_items: list[int] = field(default_factory=list)  # no text at all: described by their id
    field_counts: dict[str, int] = field(default_factory=dict)  # items with a usable value per field

    def summary(self) -> dict[str, Any]:
        return {"items": len(self.texts), "untitled_items": len(self.untitled_items),
                "empty_items": len(self.empty_items), "field_counts": self.field_counts,
                "mean_chars": round(sum(map(len, self.texts)) / max(1, len(self.texts)), 1)}


def clean(text: str) -> str:
    """Unescape entities, drop HTML tags and control characters, collapse whitespace."""
    text = html.unescape(html.unescape(text))  # Amazon texts are often escaped twice
    text = _TAG.sub(" ", text)
    text = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
    # Tags become spaces so that words do not glue; that must not leave "great ." behind.
    return _SPACE_BEFORE_PUNCT.sub(r"\1", _SPACE.sub(" ", text)).strip()


def _flatten(value: Any, name: str) -> str:
    """A field value as text: categories are lists of paths, reviews lists of strings or objects."""
    if value is None:
        return ""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, dict):
        for key in ("text", "reviewText", "review", "summary"):
            if isinstance(value.get(key), str):
                return clean(value[key])
        return ""
    if isinstance(value, (list, tuple)):
        if name == "reviews":
            parts = [_flatten(v, name) for v in value]
            return " | ".join([p for p in parts if p][:_MAX_REVIEWS])
        sep = " > " if value and all(isinstance(v, str) for v in value) else ", "
        parts = [_flatten(v, name) for v in value]
        unique = list(dict.fromkeys(p for p in parts if p))
        return sep.join(unique)
    return ""


def truncate(text: str, max_chars: int) -> str:
    """Cut at a word boundary so the encoder never sees half a word."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return (cut[:space] if space > max_chars // 2 else cut).rstrip(" ,;:|>")


def field_values(fields: dict[str, Any], names: Sequence[str]) -> dict[str, str]:
    """The named fields that have a usable value, flattened and cleaned, in `names` order."""
    values = {name: _flatten(fields.get(name), name) for name in names}
    return {name: v for name, v in values.items() if v}


def fuse_item(fields: dict[str, Any], names: Sequence[str], max_chars: int) -> str:
    """`Title: X. Brand: Y. ...` from the named fields that have a usable value ('' if none)."""
    return _join(field_values(fields, names), max_chars)


def _join(values: dict[str, str], max_chars: int) -> str:
    return truncate(" ".join(f"{name.capitalize()}: {v.rstrip('.')}." for name, v in values.items()), max_chars)


def fuse_catalog(items: dict[int, dict[str, Any]], num_items: int, names: Sequence[str], max_chars: int) -> FusedCatalog:
    """Fused text for items 0..num_items-1."""
    out = FusedCatalog(texts=[], field_counts={n: 0 for n in names})
    for item in range(num_items):
        values = field_values(items.get(item, {}), names)
        for name in values:
            out.field_counts[name] += 1
        text = _join(values, max_chars)
        if not text:
            out.empty_items.append(item)
            text = f"Item {item}."
        elif "title" in names and "title" not in values:
            out.untitled_items.append(item)
        out.texts.append(text)
    return out
