"""Markdown pieces of BENCHMARKS.md: tables, anchors, the provenance line of a results record, and
the Section and Row types benchmarks/report_sections.py fills."""
from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class Row:
    """One line of the summary table."""

    question: str
    gream: str
    alternative: str
    difference: str  # a ratio or a difference, with its interval or spread
    status: str  # against the target


@dataclass(frozen=True)
class Section:
    title: str
    needs: str  # the record without which the section is not rendered
    rows: Callable[[dict[str, dict]], list[Row]]
    body: Callable[[dict[str, dict]], str]
    uses: tuple[str, ...] = ()  # records read besides `needs`, when present


def anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return "#" + re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def interval(m: dict, digits: int = 4) -> str:
    """`+0.0013 [+0.0001, +0.0026]` from {diff, low, high}."""
    return f"{m['diff']:+.{digits}f} [{m['low']:+.{digits}f}, {m['high']:+.{digits}f}]"


def verdict(m: dict) -> str:
    if m["low"] <= 0 <= m["high"]:
        return "no difference"
    return "higher" if m["diff"] > 0 else "lower"


def spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    return ", ".join(fmt.format(v) for v in values)


def provenance(rec: dict) -> str:
    """When, where and how a record was measured, in one paragraph."""
    commit = rec.get("commit") or "no commit"
    changed = rec.get("changed_files")
    if changed:
        commit += f" with {len(changed)} changed file{'s' if len(changed) > 1 else ''}"
    m = rec.get("machine") or {}
    machine = f"{m.get('cores', '?')} cores ({m.get('cpu', 'CPU')}), {m.get('memory_gib', '?')} GiB"
    if m.get("gpus"):
        machine += ", " + ", ".join(m["gpus"])
    load = rec.get("load_before")
    load = f"load average {load[0]:.1f} before the start" if load else "load before the start not recorded"
    lines = [f"Measured {rec['date']} at {commit}; {machine}; {load}. Results file: "
             f"`benchmarks/results/{rec['name']}.json`.", "", f"    {rec['command']}"]
    source = rec.get("source")
    if source:
        files = [f"`{f.split(' (')[0]}`" + (f" ({f.split(' (', 1)[1]}" if " (" in f else "") for f in source["files"]]
        lines += ["", "Recorded after the run from its own output: " + ", ".join(files) + "."]
    return "\n".join(lines)


def wrap(text: str, width: int = 100) -> str:
    """Paragraphs of prose folded at `width`; tables, indented code, images and lists left as they are."""
    blocks = []
    for block in text.split("\n\n"):
        if block.startswith(("|", "    ", "![", "- ", "#")):
            blocks.append(block)
        else:
            blocks.append("\n".join(textwrap.fill(line, width, break_long_words=False, break_on_hyphens=False)
                                    for line in block.split("\n")))
    return "\n\n".join(blocks)


def figure(path: str, alt: str) -> str:
    return f"![{alt}](benchmarks/plots/{path})"
