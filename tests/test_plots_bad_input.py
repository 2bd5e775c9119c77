"""Bad input to lab.plots' public names: each refused with a message that names the argument, before a figure
is drawn."""

from __future__ import annotations

import math

import pandas as pd

from lab.plots import grid_heatmap, interval_plot, pareto_plot, static_model_figure
from tests.bad_input import Bad

ROW = {"route": "dense", "bytes": 10, "delta_log_ppl": [0.0, 0.0, 0.0], "verdict": "reference"}
TABLE = pd.DataFrame([[1.0, 2.0], [3.0, 4.0]], index=["a", "b"], columns=["x", "y"])

CASES: dict[str, list[Bad]] = {
    "interval_plot": [
        Bad(lambda: interval_plot([("a", [0.0, -1.0, 1.0])], {"a": "equivalent"}), TypeError,
            r"comparisons must be a mapping"),
        Bad(lambda: interval_plot({"a": "0.5"}, {"a": "equivalent"}), TypeError,
            r"comparisons\['a'\] = '0\.5': expected a sequence \[Δ, low, high\]"),
        Bad(lambda: interval_plot({"a": [math.nan, math.nan, math.nan]}, {"a": "equivalent"}), ValueError,
            r"comparisons\['a'\] entry=nan is out of range"),
        Bad(lambda: interval_plot({"a": [0.0, -1.0, 1.0]}, {"a": "equivalent"}, ax="left"), TypeError,
            r"ax must be a matplotlib Axes or None, got str"),
        Bad(lambda: interval_plot({"a": [0.0, -1.0, 1.0]}, {"b": "lower"}), ValueError, r"verdicts must give one of"),
    ],
    "grid_heatmap": [
        Bad(lambda: grid_heatmap(TABLE.values), TypeError, r"table must be a non-empty pandas DataFrame, got ndarray"),
        Bad(lambda: grid_heatmap(TABLE.iloc[:0]), ValueError, r"table must be a non-empty pandas DataFrame"),
        Bad(lambda: grid_heatmap(TABLE, fmt="%.1f"), ValueError, r"fmt='%\.1f' is not a format specification"),
    ],
    "static_model_figure": [
        Bad(lambda: static_model_figure({"rows": []}), ValueError, r"record must be the dict of "
                                                                   r"results/kernels_sm90\.json"),
        Bad(lambda: static_model_figure("results/kernels_sm90.json"), TypeError, r"record must be the dict"),
    ],
    "pareto_plot": [
        Bad(lambda: pareto_plot([ROW], "dense"), TypeError, r"front must be a list of route names, got 'dense'"),
        Bad(lambda: pareto_plot([{"route": "dense"}], ["dense"]), ValueError, r"rows\[0\] must be a leaderboard row"),
        Bad(lambda: pareto_plot([], []), ValueError, r"rows is empty"),
        Bad(lambda: pareto_plot([ROW], ["int4"]), ValueError, r"front names routes that are not in rows"),
    ],
}

NO_INPUT: dict[str, str] = {}
