"""The metrics `notebooks/07_putting_it_together.ipynb` records, each with what it must satisfy."""

from __future__ import annotations

from tests.expected.matchers import Claim, exactly, near

METRICS: dict[str, object] = {
    # read from results/leaderboard_cpu.json (python -m lab.bench leaderboard); REBUILD = False
    "ex_bits_embedding_fraction": near(0.3214439866588189, 1e-9),
    "ex_bits_gptq4_bits_per_weight": near(8.218913086129096, 1e-9),
    "ex_bits_gptq4_predicted_MB": near(6.68928, 1e-9),
    "ex_budget_1_memory_bound": {'GPTQ int4 g64'},
    "ex_budget_25_memory_bound": {'draft + GPTQ int4'},
    "ex_ceiling_dense_tokens_per_s": near(367709.6956466849, 1e-9),
    "ex_ceiling_launch_tokens_per_s": near(5555.555555555556, 1e-9),
    "lb_2_4_int4_MB": near(6.153624, 1e-9),
    "lb_2_4_int4_bytes_ratio": near(0.4714056683675283, 1e-9),
    "lb_2_4_int4_vs_dense": Claim("higher"),   # +4.66% [+3.91, +5.42]
    "lb_budget_pct": near(10.0, 1e-9),
    "lb_dense_MB": near(13.053776, 1e-9),
    "lb_dense_perplexity": near(29.242861485135105, 1e-9),
    "lb_draft_2_layers_MB": near(7.147904, 1e-9),
    "lb_draft_2_layers_bytes_ratio": near(0.5475736675732753, 1e-9),
    "lb_draft_2_layers_vs_dense": Claim("higher"),   # +21.45% [+18.73, +24.12]
    "lb_draft_gptq_int4_MB": near(5.030888, 1e-9),
    "lb_draft_gptq_int4_bytes_ratio": near(0.3853971448567832, 1e-9),
    "lb_draft_gptq_int4_vs_dense": Claim("higher"),   # +21.82% [+19.09, +24.49]
    "lb_gptq_int3_g64_MB": near(6.081496, 1e-9),
    "lb_gptq_int3_g64_bytes_ratio": near(0.4658802173409441, 1e-9),
    "lb_gptq_int3_g64_vs_dense": Claim("higher"),   # +0.84% [+0.58, +1.12]
    "lb_gptq_int4_g64_MB": near(6.702688, 1e-9),
    "lb_gptq_int4_g64_bytes_ratio": near(0.5134673676030599, 1e-9),
    "lb_gptq_int4_g64_vs_dense": Claim("higher"),   # +0.19% [+0.04, +0.35]
    "lb_n_routes": exactly(12),
    "lb_pareto_front": {'GPTQ int4 g64, GPTQ int3 g64, W8A8 SmoothQuant, draft + GPTQ int4'},
    "lb_pick_batch_serving": {'W8A8 SmoothQuant'},
    "lb_pick_memory_bound_decode": {'GPTQ int3 g64'},
    "lb_pick_no_calibration_data": {'RTN int4 g64'},
    "lb_pick_no_training_budget": {'GPTQ int3 g64'},
    "lb_rtn_int4_g64_MB": near(6.702688, 1e-9),
    "lb_rtn_int4_g64_bytes_ratio": near(0.5134673676030599, 1e-9),
    "lb_rtn_int4_g64_vs_dense": Claim("higher"),   # +0.37% [+0.11, +0.61]
    "lb_sparsegpt_2_4_MB": near(9.186944, 1e-9),
    "lb_sparsegpt_2_4_bytes_ratio": near(0.7037767462839871, 1e-9),
    "lb_sparsegpt_2_4_vs_dense": Claim("higher"),   # +4.52% [+3.79, +5.25]
    "lb_sparsegpt_50_MB": near(13.053776, 1e-9),
    "lb_sparsegpt_50_bytes_ratio": near(1.0, 1e-9),
    "lb_sparsegpt_50_vs_dense": Claim("higher"),   # +1.76% [+1.10, +2.43]
    "lb_student_3_layers_MB": near(8.62436, 1e-9),
    "lb_student_3_layers_bytes_ratio": near(0.6606793314057174, 1e-9),
    "lb_student_3_layers_vs_dense": Claim("higher"),   # +24.17% [+21.68, +26.45]
    "lb_student_gptq_int4_MB": near(5.44884, 1e-9),
    "lb_student_gptq_int4_bytes_ratio": near(0.41741485375572557, 1e-9),
    "lb_student_gptq_int4_vs_dense": Claim("higher"),   # +24.63% [+22.14, +26.91]
    "lb_w8a8_smoothquant_MB": near(8.66304, 1e-9),
    "lb_w8a8_smoothquant_bytes_ratio": near(0.663642458703137, 1e-9),
    "lb_w8a8_smoothquant_vs_dense": Claim("inconclusive"),   # -0.00% [-0.05, +0.04]
}
