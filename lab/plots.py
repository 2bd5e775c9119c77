"""Plots of comparisons with their intervals, shared by the chapter notebooks.

A comparison is [Δ, low, high] (the form `lab.core.report.record_comparisons` records: change of
perplexity in percent with its 95% interval) and its verb ("lower", "higher", "equivalent" or
"inconclusive", after Holm's correction across the figure's comparisons, which the interval alone does
not give). `interval_plot` draws one row per comparison, a dot at Δ and a bar from low to high,
coloured by its verb, with a line at 0. Seaborn draws it from the computed interval,
not from a resampling of its own: each comparison is three rows (low, Δ, high) of a long-form
frame, and ``sns.pointplot(estimator="median", errorbar=("pi", 100))`` puts the point at their
median, Δ, and the bar over their full range, [low, high]. `grid_heatmap` shows a two-parameter sweep
(for example chapter 4's temperature × α grid) as a seaborn heatmap with each cell's value.
`static_model_figure` draws chapter 3's static model of the int4 kernels (`lab.kernels.aot.model`).
`pareto_plot` draws chapter 7's leaderboard: bytes against Δ log-perplexity with each interval.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from lab.core.checks import check_number
from lab.core.stats import VERDICTS

__all__ = [
    "interval_plot", "grid_heatmap", "static_model_figure", "pareto_plot",
]

COLORS = {"lower": "tab:green", "higher": "tab:red", "equivalent": "tab:blue", "inconclusive": "tab:gray"}


def _check_ax(ax) -> None:
    if ax is not None and not isinstance(ax, plt.Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")


def interval_plot(comparisons: Mapping[str, Sequence[float]], verdicts: Mapping[str, str],
                  xlabel: str = "perplexity change (%)", title: str | None = None,
                  ax: plt.Axes | None = None) -> plt.Axes:
    """One row per {label: [Δ, low, high]}: the point Δ and its interval, coloured by ``verdicts[label]``
    (the recorded verb, `lab.core.report.record_comparisons`)."""
    _check_ax(ax)
    for name, value in (("comparisons", comparisons), ("verdicts", verdicts)):
        if not isinstance(value, Mapping):
            raise TypeError(f"{name} must be a mapping {{label: ...}}, got {type(value).__name__}")
    if not comparisons:
        raise ValueError("comparisons is empty: nothing to plot")
    if set(verdicts) != set(comparisons) or not set(verdicts.values()) <= set(VERDICTS):
        raise ValueError(f"verdicts must give one of {VERDICTS} for each label of comparisons, got {dict(verdicts)}")
    rows = []
    for label, value in comparisons.items():
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 3:
            raise TypeError(f"comparisons[{label!r}] = {value!r}: expected a sequence [Δ, low, high]")
        mid, low, high = (check_number(f"comparisons[{label!r}] entry", v) for v in value)
        if not low <= mid <= high:
            raise ValueError(f"comparisons[{label!r}] = {value!r}: expected [Δ, low, high] "
                             f"with low <= Δ <= high")
        rows += [{"label": label, "value": v, "verdict": verdicts[label]} for v in (low, mid, high)]
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.45 * len(comparisons) + 1.2), layout="tight")
    sns.pointplot(pd.DataFrame(rows), x="value", y="label", hue="verdict", order=list(comparisons),
                  palette=COLORS, estimator="median", errorbar=("pi", 100), linestyles="none",
                  markersize=5, capsize=0.3, err_kws={"linewidth": 1.5}, legend=False, ax=ax)
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set(xlabel=xlabel, ylabel=None, title=title)
    return ax


def grid_heatmap(table: pd.DataFrame, fmt: str = ".1f", title: str | None = None,
                 ax: plt.Axes | None = None, **kwargs) -> plt.Axes:
    """``table`` (rows × columns of one value, e.g. a pivot_table) as an annotated heatmap."""
    _check_ax(ax)
    if not isinstance(table, pd.DataFrame) or table.empty:
        raise (ValueError if isinstance(table, pd.DataFrame) else TypeError)(
            f"table must be a non-empty pandas DataFrame, got {type(table).__name__} {getattr(table, 'shape', '')}")
    try:
        format(1.0, fmt)
    except (TypeError, ValueError):
        raise ValueError(f"fmt={fmt!r} is not a format specification for a number (e.g. '.1f')") from None
    if ax is None:
        _, ax = plt.subplots(figsize=(1.1 * table.shape[1] + 2, 0.6 * table.shape[0] + 1.2), layout="tight")
    sns.heatmap(table, annot=True, fmt=fmt, cmap="viridis_r", ax=ax, **kwargs)
    ax.set(title=title)
    return ax


def static_model_figure(record: dict) -> plt.Figure:
    """Left: the predicted µs per call (H200) of int4 v1, v2 and the dense bf16 kernel at M = 1, 4, 16 beside
    int4's memory-bound time; right: the terms of v1 and v2 at M = 1 (issue, each pipe, latency, memory), the
    largest of which bounds each kernel. ``record``: results/kernels_sm90.json (all predicted)."""
    if not isinstance(record, Mapping) or not {"ceilings", "rows"} <= record.keys():
        raise (ValueError if isinstance(record, Mapping) else TypeError)(
            f"record must be the dict of results/kernels_sm90.json (with 'ceilings' and 'rows'), got "
            f"{type(record).__name__} {sorted(record) if isinstance(record, Mapping) else ''}")
    from lab.kernels.aot.reading import LAYER, dense_us, int4_rows

    int4, Ms = int4_rows(record), [1, 4, 16]
    colors = {"v1": "tab:red", "v2": "tab:green", "dense": "tab:blue"}
    bandwidth = record["ceilings"]["h200"]["bandwidth_bytes_per_s"]
    fig, (ax, terms) = plt.subplots(1, 2, figsize=(13, 3.8), layout="tight")
    for i, v in enumerate(("v1", "v2", "dense")):
        ax.bar([j + 0.27 * i for j in range(len(Ms))],
               [dense_us(record, M) if v == "dense" else int4[v, M]["predicted_us_h200"] for M in Ms],
               width=0.25, color=colors[v], label=f"{'dense bf16 kernel' if v == 'dense' else 'int4 ' + v}")
    mid = [j + 0.27 for j in range(len(Ms))]
    ax.plot(mid, [int4["v2", M]["memory_bound_us_h200"] for M in Ms], "k_", markersize=24, mew=2,
            label=f"int4 memory-bound ({bandwidth / 1e12:.1f} TB/s)")
    top = max(p.get_height() for p in ax.patches)
    ax.set(xticks=mid, xticklabels=[f"M = {M}" for M in Ms], ylabel="µs per call (predicted, H200)",
           title=f"{LAYER} × {LAYER}, g = 128 (static model)", ylim=(0, 1.45 * top))
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    names = ["issue", *sorted({p for v in ("v1", "v2") for p in int4[v, 1]["pipe_us"]}), "latency", "memory"]
    for i, v in enumerate(("v1", "v2")):
        r = int4[v, 1]
        values = {"issue": r["issue_us"], **r["pipe_us"], "latency": r["latency_us"],
                  "memory": r["memory_bound_us_h200"]}
        terms.barh([j + 0.4 * i for j in range(len(names))], [values.get(n, 0.0) for n in names], height=0.38,
                   color=colors[v], label=f"int4 {v}: {r['predicted_us_h200']:.1f} µs predicted")
    terms.set(yticks=[j + 0.2 for j in range(len(names))], yticklabels=names, xlabel="µs per call at M = 1 (H200)",
              title="the terms of each call: the largest bounds it")
    terms.legend(fontsize=8)
    return fig


def pareto_plot(rows: Sequence[Mapping], front: Sequence[str], ax: plt.Axes | None = None) -> plt.Axes:
    """Each leaderboard row (`lab.capstone.leaderboard`) at (bytes in MB, Δ log-perplexity in nats) with its
    95% interval as a vertical bar, coloured by its verdict (Holm across the routes; the reference in black);
    the routes of ``front`` (`lab.capstone.pareto.pareto_front`: dominated by none) joined by a line."""
    _check_ax(ax)
    if not rows:
        raise ValueError("rows is empty: nothing to plot")
    if isinstance(front, str) or not isinstance(front, Collection):
        raise TypeError(f"front must be a list of route names, got {front!r}")
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping) or not {"route", "bytes", "delta_log_ppl", "verdict"} <= r.keys():
            raise ValueError(f"rows[{i}] must be a leaderboard row with route, bytes, delta_log_ppl and verdict, "
                             f"got {r!r:.100}")
    missing = set(front) - {r["route"] for r in rows}
    if missing:
        raise ValueError(f"front names routes that are not in rows: {sorted(missing)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.2), layout="tight")
    for r in rows:
        mid, low, high = r["delta_log_ppl"]
        ax.errorbar(r["bytes"] / 1e6, mid, yerr=[[mid - low], [high - mid]], fmt="o", capsize=3,
                    color=COLORS.get(r["verdict"], "k"))
        ax.annotate(r["route"], (r["bytes"] / 1e6, mid), textcoords="offset points", xytext=(5, 3), fontsize=8)
    points = sorted((r["bytes"] / 1e6, r["delta_log_ppl"][0]) for r in rows if r["route"] in front)
    ax.plot(*zip(*points), color="tab:blue", lw=1, alpha=0.6, zorder=0, label="Pareto front")
    ax.set_yscale("symlog", linthresh=0.01)          # linear within ±0.01 nats, logarithmic beyond
    ax.set(xlabel="bytes of the stored model (MB)",
           ylabel=f"Δ log-perplexity vs {rows[0]['route']} (nats, symlog)")
    ax.legend(loc="upper right")
    return ax
