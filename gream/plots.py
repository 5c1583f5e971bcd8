"""PNG plots for reports (`gream report RUN` and benchmarks/report.py): a few figure kinds drawn
with matplotlib's Agg backend, which needs no display. Each function returns the figure; `png`
gives its bytes (to embed in a page), `save` writes it."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.figure import Figure  # noqa: E402

SIZE = (8, 4.2)
DPI = 110
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")  # matplotlib's tab10: ten hues a reader tells apart


@dataclass(frozen=True)
class Line:
    points: Sequence[tuple[float, float]]
    group: str  # the legend entry and colour; every line of a group shares both (e.g. a recipe's seeds)
    band: Sequence[tuple[float, float, float]] = ()  # (x, low, high) shaded around the line


def colour_of(groups: Sequence[str]) -> dict[str, str]:
    return {g: COLOURS[i % len(COLOURS)] for i, g in enumerate(dict.fromkeys(groups))}


def lines(series: Sequence[Line], *, title: str, xlabel: str, ylabel: str,
          hlines: Mapping[str, float] | None = None, percent: bool = False) -> Figure:
    """One line per series, a dashed reference line per `hlines` entry (e.g. the SFT model's figure)."""
    fig, ax = plt.subplots(figsize=SIZE)
    colours = colour_of([s.group for s in series])
    labelled = set()
    for s in series:
        if not s.points:
            continue
        xs, ys = zip(*sorted(s.points))
        ax.plot(xs, ys, marker="o", markersize=3, color=colours[s.group], alpha=0.85,
                label=None if s.group in labelled else s.group)
        labelled.add(s.group)
        if s.band:
            bx, lo, hi = zip(*sorted(s.band))
            ax.fill_between(bx, lo, hi, color=colours[s.group], alpha=0.15, linewidth=0)
    for i, (label, value) in enumerate((hlines or {}).items()):
        ax.axhline(value, color="k", linestyle=("--", ":", "-.")[i % 3], linewidth=1, label=label)
    if percent:
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    return _finish(fig, ax, title, xlabel, ylabel)


def bars(labels: Sequence[str], values: Sequence[float], *, title: str, ylabel: str,
         spread: Sequence[tuple[float, float]] | None = None, annotate: str = "{:.3g}") -> Figure:
    """One bar per label, with a [low, high] whisker each where `spread` is given."""
    fig, ax = plt.subplots(figsize=SIZE)
    colours = colour_of(labels)
    xs = range(len(labels))
    ax.bar(xs, values, color=[colours[label] for label in labels])
    if spread:
        lows = [v - lo for v, (lo, _) in zip(values, spread)]
        highs = [hi - v for v, (_, hi) in zip(values, spread)]
        ax.errorbar(xs, values, yerr=[lows, highs], fmt="none", ecolor="k", capsize=4, linewidth=1)
    for x, v in zip(xs, values):  # beside the whisker, above a bar that rises and below one that falls
        ax.annotate(annotate.format(v), (x, v), textcoords="offset points", xytext=(6, 3 if v >= 0 else -3),
                    ha="left", va="bottom" if v >= 0 else "top", fontsize=8)
    ax.set_xticks(list(xs), labels, fontsize=8)
    return _finish(fig, ax, title, None, ylabel, legend=False)


def stacked(steps: Sequence[int], parts: Mapping[str, Sequence[float | None]], *, title: str, ylabel: str) -> Figure:
    """Per step, the parts stacked (a missing value counts as 0)."""
    fig, ax = plt.subplots(figsize=SIZE)
    colours = colour_of(list(parts))
    bottom = [0.0] * len(steps)
    for name, values in parts.items():
        heights = [v or 0.0 for v in values]
        ax.bar(steps, heights, bottom=bottom, color=colours[name], label=name, width=0.8)
        bottom = [b + h for b, h in zip(bottom, heights)]
    return _finish(fig, ax, title, "step", ylabel)


def points(items: Sequence[tuple[str, float, float, tuple[float, float] | None, tuple[float, float] | None]], *,
           title: str, xlabel: str, ylabel: str) -> Figure:
    """Labelled points (label, x, y, x interval, y interval): a trade-off between two figures."""
    fig, ax = plt.subplots(figsize=SIZE)
    colours = colour_of([label for label, *_ in items])
    for label, x, y, xi, yi in items:
        xerr = None if xi is None else [[x - xi[0]], [xi[1] - x]]
        yerr = None if yi is None else [[y - yi[0]], [yi[1] - y]]
        ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt="o", color=colours[label], capsize=3, label=label)
    return _finish(fig, ax, title, xlabel, ylabel)


def _finish(fig: Figure, ax, title: str, xlabel: str | None, ylabel: str, legend: bool = True) -> Figure:
    ax.set_title(title, fontsize=10)
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # No timestamp in the file: the same figures draw the same bytes.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png(fig))
    return path
