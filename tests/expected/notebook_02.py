"""The metrics `notebooks/02_pruning.ipynb` records, each with what it must satisfy."""

from __future__ import annotations

from tests.expected.matchers import Between, Claim, Is, Timing, exactly, near

METRICS: dict[str, object] = {
    "dense_perplexity": near(29.24, 0.02),
    # one layer (middle block's up_proj, 50%): SparseGPT's reconstruction error well below the others
    "layer_error_sparsegpt_50": Between(0.005, 0.02),   # measured 0.0135
    "layer_error_wanda_50": Between(0.025, 0.045),      # measured 0.0327
    "layer_error_magnitude_50": Between(0.025, 0.045),  # measured 0.0326
    # whole model, perplexity / dense (measured: sparsegpt 1.018, wanda 1.034, magnitude 1.035 at 50%)
    "ppl_ratio_sparsegpt_50": Between(1.0, 1.03),
    "ppl_ratio_wanda_50": Between(1.02, 1.06),
    "ppl_ratio_magnitude_50": Between(1.02, 1.06),
    "ppl_ratio_sparsegpt_24": Between(1.02, 1.07),
    "ppl_ratio_wanda_24": Between(1.07, 1.14),
    "ppl_ratio_magnitude_24": Between(1.07, 1.14),
    # paired comparisons on the evaluation tokens (lab.core.stats.compare), Wanda/SparseGPT at 50% over
    # 3 calibration seeds: the verbs of the notebook's text
    "layer_error_sparsegpt_vs_magnitude": Claim("lower", -70, -45),   # measured -58.5%
    "layer_error_wanda_vs_magnitude": Claim("level"),
    **{f"sparsegpt_vs_magnitude_{s}": Claim("lower") for s in (50, 60, 70)},
    "wanda_vs_magnitude_50": Claim("level"),
    "wanda_vs_magnitude_60": Claim("higher"),
    "wanda_vs_magnitude_70": Claim("higher"),
    **{f"{m}_24_vs_50": Claim("higher") for m in ("magnitude", "wanda", "sparsegpt")},
    **{f"{m}_50_vs_dense": Claim("higher") for m in ("magnitude", "wanda", "sparsegpt")},
    "most_vs_runner_up_sensitive": Claim("level"),
    "structured_25_vs_dense": Claim("higher"),
    "structured_50_vs_dense": Claim("higher"),
    "structured_0.25_params": exactly(5_418_240),
    "structured_0.5_params": exactly(4_312_320),
    "structured_25_cpu_speedup": Timing(),   # timings of this run, glued as such
    "structured_50_cpu_speedup": Timing(),
    "compress_24_roundtrip_exact": Is(True),
    # the executed exercise solutions (the notebook's last section, book page's Exercises)
    # exercise "Two copies of one feature": X_2 = X_1, w = (1, 1), remove w_1 (errors in ‖X_1‖²)
    "ex_correlated_error_magnitude": near(1.0, 1e-9),
    "ex_correlated_error_wanda": near(1.0, 1e-9),
    "ex_correlated_error_obs": near(9.80296e-05, 1e-4),      # (p / (1 + p))², p = percdamp = 0.01
    "ex_correlated_closed_form": near(9.80296e-05, 1e-5),
    "ex_correlated_obs_w2": near(1.990099, 1e-6),             # 1 + 1 / (1 + p)
    # exercise "4:8 between unstructured and 2:4" (middle block's up_proj, 50%, calibration seed 0)
    "ex_nm48_magnitude_24": near(0.06582, 0.02),
    "ex_nm48_magnitude_48": near(0.05039, 0.02),
    "ex_nm48_magnitude_unstructured": near(0.03260, 0.02),   # = layer_error_magnitude_50
    "ex_nm48_wanda_24": near(0.06429, 0.02),
    "ex_nm48_wanda_48": near(0.04877, 0.02),
    "ex_nm48_wanda_unstructured": near(0.03274, 0.02),
    "ex_nm48_sparsegpt_24": near(0.02178, 0.02),
    "ex_nm48_sparsegpt_48": near(0.01614, 0.02),
    "ex_nm48_sparsegpt_unstructured": near(0.01348, 0.02),
    "ex_nm48_gap_closed_magnitude": Between(0.35, 0.6),       # measured 0.464
    "ex_nm48_gap_closed_wanda": Between(0.35, 0.6),           # measured 0.492
    "ex_nm48_gap_closed_sparsegpt": Between(0.55, 0.8),       # measured 0.679
    "ex_nm48_between_for_every_method": Is(True),
    "ex_nm48_sparsegpt_816_over_unstructured": Between(0.98, 1.02),  # measured 0.9997
    # exercise "What a quarter of the units is worth": L·(2CD(G+1) + 3C·d_ff/4) = 6·184,320
    "ex_structured_removed": exactly(1_105_920),
    "ex_structured_formula_matches": Is(True),
    "ex_structured_fraction_total": near(1_105_920 / 6_524_160, 1e-9),
    "ex_structured_fraction_layers": near(1_105_920 / 4_426_752, 1e-9),
    "ex_structured_fraction_embedding": near(2_097_152 / 6_524_160, 1e-9),
}
