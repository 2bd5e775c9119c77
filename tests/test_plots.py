"""lab.plots: one row per comparison, its drawn interval the computed one, coloured by the verb the
interval allows; heatmaps annotate; the static model figure draws one bar per kernel version and batch."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest

from lab.plots import COLORS, grid_heatmap, interval_plot, static_model_figure


def _drawn_intervals(ax):
    """{row: (low, high, colour)} of the error bars seaborn drew (lines of 8 points, cap, bar, cap;
    seaborn also draws all-NaN bars for the rows of the other hue levels)."""
    bars = [line for line in ax.lines if len(line.get_xdata()) == 8
            and not np.isnan(line.get_xdata()).all()]
    return {round(float(np.nanmean(line.get_ydata()))): (np.nanmin(line.get_xdata()),
            np.nanmax(line.get_xdata()), mcolors.to_hex(line.get_color())) for line in bars}


def test_interval_plot_draws_each_computed_interval_with_its_verdict_colour():
    comparisons = {"a lower": [-1.0, -1.5, -0.5], "b equivalent": [0.1, -0.2, 0.4],
                   "c higher": [2.0, 1.0, 3.0], "d after Holm": [0.3, 0.25, 2.75]}
    verbs = {"a lower": "lower", "b equivalent": "equivalent", "c higher": "higher", "d after Holm": "inconclusive"}
    ax = interval_plot(comparisons, verbs)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(comparisons)
    colours = [mcolors.to_hex(COLORS[v]) for v in verbs.values()]
    drawn = _drawn_intervals(ax)
    assert drawn == {row: (low, high, colour) for row, ((_, low, high), colour)
                     in enumerate(zip(comparisons.values(), colours))}
    points = {round(float(y)): float(x) for line in ax.lines if line.get_marker() == "o"
              for x, y in zip(line.get_xdata(), line.get_ydata()) if not np.isnan(x)}
    assert points == {row: mid for row, (mid, _, _) in enumerate(comparisons.values())}


def test_interval_plot_refuses_a_point_outside_its_interval():
    with pytest.raises(ValueError, match=r"comparisons\['bad'\].*low <= Δ <= high"):
        interval_plot({"bad": [1.0, 1.5, 2.0]}, {"bad": "higher"})


def test_interval_plot_refuses_nothing_to_plot_and_a_missing_verb():
    with pytest.raises(ValueError, match="empty"):
        interval_plot({}, {})
    with pytest.raises(ValueError, match="verdicts must give one of"):
        interval_plot({"a": [1.0, 0.5, 2.0]}, {"a": "level"})


def test_grid_heatmap_annotates_every_cell():
    table = pd.DataFrame([[1.0, 2.0], [3.0, 4.0]], index=[1, 2], columns=[0.5, 1.0])
    ax = grid_heatmap(table, fmt=".0f")
    assert sorted(t.get_text() for t in ax.texts) == ["1", "2", "3", "4"]


def test_static_model_figure_draws_the_predicted_times_and_the_terms(repo_root):
    import json

    record = json.loads((repo_root / "results" / "kernels_sm90.json").read_text())
    bars, terms = static_model_figure(record).axes
    heights = [p.get_height() for p in bars.patches]
    rows = {(r["version"], r["shape"]["M"]): r["predicted_us_h200"] for r in record["rows"]
            if r["kernel"].startswith(("int4", "dense"))}
    assert heights == pytest.approx([rows[v, M] for v in ("v1", "v2", "dense") for M in (1, 4, 16)])
    labels = [t.get_text() for t in terms.get_yticklabels()]
    assert labels[0] == "issue" and labels[-2:] == ["latency", "memory"] and "conversion" in labels
    v1_terms = [p.get_width() for p in terms.patches[:len(labels)]]
    v1 = record["rows"][0]
    assert (v1["version"], v1["kernel"], v1["shape"]["M"]) == ("v1", "int4_matmul", 1)
    assert max(v1_terms) == pytest.approx(v1["predicted_us_h200"])       # one kernel: its largest term


def test_pareto_plot_draws_every_row_with_its_interval_and_the_front():
    from lab.plots import pareto_plot

    rows = [{"route": "dense", "bytes": 10e6, "delta_log_ppl": [0.0, 0.0, 0.0], "verdict": "reference"},
            {"route": "int4", "bytes": 5e6, "delta_log_ppl": [0.01, 0.005, 0.02], "verdict": "higher"},
            {"route": "bad", "bytes": 8e6, "delta_log_ppl": [0.2, 0.1, 0.3], "verdict": "higher"}]
    ax = pareto_plot(rows, ["dense", "int4"])
    bars = [c for c in ax.containers]
    assert len(bars) == 3
    for container, r in zip(bars, rows):
        (x,), (y,) = container.lines[0].get_data()
        assert (x, y) == (r["bytes"] / 1e6, r["delta_log_ppl"][0])
        segment = container.lines[2][0].get_segments()[0]
        assert [segment[0][1], segment[1][1]] == r["delta_log_ppl"][1:]
        assert mcolors.to_hex(container.lines[0].get_color()) == mcolors.to_hex(COLORS.get(r["verdict"], "k"))
    front = [line for line in ax.get_lines() if line.get_label() == "Pareto front"][0]
    assert list(front.get_xdata()) == [5.0, 10.0]
    with pytest.raises(ValueError, match="front names routes that are not in rows"):
        pareto_plot(rows, ["nope"])
