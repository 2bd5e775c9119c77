"""Plots of comparisons with their intervals, shared by the chapter notebooks.

A comparison is [Δ, low, high] (the form `lab.report.record_comparison` records: change of
perplexity in percent with its 95% interval). `interval_plot` draws one row per comparison, a
dot at Δ and a bar from low to high, with a line at 0: an interval that crosses the line is
"level", one that does not is "lower" or "higher". `grid_heatmap` shows a two-parameter sweep
(for example chapter 4's temperature × α grid) as a seaborn heatmap with each cell's value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from lab.stats import verdict

COLORS = {"lower": "tab:green", "level": "tab:gray", "higher": "tab:red"}


def interval_plot(comparisons: Mapping[str, Sequence[float]], xlabel: str = "perplexity change (%)",
                  title: str | None = None, ax: plt.Axes | None = None) -> plt.Axes:
    """One row per {label: [Δ, low, high]}: the point Δ and its interval, coloured by verdict."""
    if not comparisons:
        raise ValueError("comparisons is empty: nothing to plot")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.45 * len(comparisons) + 1.2), layout="tight")
    for row, (label, (mid, low, high)) in enumerate(comparisons.items()):
        ax.errorbar(mid, row, xerr=[[mid - low], [high - mid]], fmt="o", capsize=3,
                    color=COLORS[verdict(low, high)])
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_yticks(range(len(comparisons)), list(comparisons))
    ax.invert_yaxis()
    ax.set(xlabel=xlabel, title=title)
    return ax


def grid_heatmap(table: pd.DataFrame, fmt: str = ".1f", title: str | None = None,
                 ax: plt.Axes | None = None, **kwargs) -> plt.Axes:
    """``table`` (rows × columns of one value, e.g. a pivot_table) as an annotated heatmap."""
    if ax is None:
        _, ax = plt.subplots(figsize=(1.1 * table.shape[1] + 2, 0.6 * table.shape[0] + 1.2), layout="tight")
    sns.heatmap(table, annot=True, fmt=fmt, cmap="viridis_r", ax=ax, **kwargs)
    ax.set(title=title)
    return ax
