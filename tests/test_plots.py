"""lab.plots: one row per comparison, coloured by the verb its interval allows; heatmaps annotate; the static
model figure draws one bar per kernel version and batch."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors
import pandas as pd
import pytest

from lab.plots import COLORS, grid_heatmap, interval_plot, static_model_figure


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


def test_static_model_figure_draws_both_versions_at_each_batch(repo_root):
    import json

    record = json.loads((repo_root / "results" / "kernels_static_sm90.json").read_text())
    bars, mix = static_model_figure(record).axes
    heights = [p.get_height() for p in bars.patches]
    rows = {(r["version"], r["shape"]["M"]): r["issue_bound_us"] for r in record["rows"] if r["kernel"].startswith("int4")}
    assert heights == pytest.approx([rows[v, M] for v in ("v1", "v2") for M in (1, 4, 16)])
    assert [t.get_text() for t in mix.get_yticklabels()] == ["memory", "conversion", "fma_mma", "shared", "other"]
