"""lab.plots: one row per comparison, coloured by the verb its interval allows; heatmaps annotate."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors
import pandas as pd
import pytest

from lab.plots import COLORS, grid_heatmap, interval_plot


def test_interval_plot_draws_each_comparison_with_its_verdict_colour():
    comparisons = {"a lower": [-1.0, -1.5, -0.5], "b level": [0.1, -0.2, 0.4], "c higher": [2.0, 1.0, 3.0]}
    ax = interval_plot(comparisons)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(comparisons)
    colours = [mcolors.to_hex(line.get_color()) for line in ax.lines if line.get_marker() == "o"]
    assert colours == [mcolors.to_hex(COLORS[v]) for v in ("lower", "level", "higher")]


def test_interval_plot_refuses_nothing_to_plot():
    with pytest.raises(ValueError, match="empty"):
        interval_plot({})


def test_grid_heatmap_annotates_every_cell():
    table = pd.DataFrame([[1.0, 2.0], [3.0, 4.0]], index=[1, 2], columns=[0.5, 1.0])
    ax = grid_heatmap(table, fmt=".0f")
    assert sorted(t.get_text() for t in ax.texts) == ["1", "2", "3", "4"]
