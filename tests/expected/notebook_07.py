"""The metrics `notebooks/07_putting_it_together.ipynb` records, each with what it must satisfy."""

from __future__ import annotations

from tests.expected.matchers import Claim, Is, exactly, near

METRICS: dict[str, object] = {
    # read from results/leaderboard_cpu.json (python -m lab.bench leaderboard); REBUILD = False.
    # The sample-vs-split figures are computed by the notebook (section 4).
    "ex_bits_embedding_fraction": near(0.3214439866588189, 1e-9),
    "ex_bits_gptq4_bits_per_weight": near(8.218922895821072, 1e-9),
    "ex_bits_gptq4_predicted_MB": near(6.68928, 1e-9),
    "ex_budget_1_memory_bound": {'nvfp4'},
    "ex_budget_25_memory_bound": {'draft + GPTQ int4'},
    "ex_ceiling_dense_tokens_per_s": near(367709.6956466849, 1e-9),
    "ex_ceiling_launch_tokens_per_s": near(5555.555555555556, 1e-9),
    "lb_2_4_int4_MB": near(6.153624, 1e-9),
    "lb_2_4_int4_bytes_ratio": near(0.4714056683675283, 1e-9),
    "lb_2_4_int4_read_MB": near(6.153624, 1e-9),
    "lb_2_4_int4_vs_dense": Claim("higher"),   # +4.34% [+3.53, +4.87]
    "lb_budget_pct": near(10.0, 1e-9),
    "lb_dense_MB": near(13.053776, 1e-9),
    "lb_dense_perplexity": near(51.93964963046673, 1e-9),
    "lb_draft_2_layers_MB": near(7.147904, 1e-9),
    "lb_draft_2_layers_bytes_ratio": near(0.5475736675732753, 1e-9),
    "lb_draft_2_layers_read_MB": near(7.147904, 1e-9),
    "lb_draft_2_layers_vs_dense": Claim("higher"),   # +19.25% [+17.68, +20.81]
    "lb_draft_gptq_int4_MB": near(5.030896, 1e-9),
    "lb_draft_gptq_int4_bytes_ratio": near(0.38539775770627593, 1e-9),
    "lb_draft_gptq_int4_read_MB": near(5.030896, 1e-9),
    "lb_draft_gptq_int4_vs_dense": Claim("higher"),   # +19.56% [+17.98, +21.08]
    "lb_gptq_int3_g64_MB": near(6.081496, 1e-9),
    "lb_gptq_int3_g64_bytes_ratio": near(0.4658802173409441, 1e-9),
    "lb_gptq_int3_g64_read_MB": near(13.053776, 1e-9),
    "lb_gptq_int3_g64_vs_dense": Claim("higher"),   # +0.82% [+0.54, +1.71]
    "lb_gptq_int4_g64_MB": near(6.702696, 1e-9),
    "lb_gptq_int4_g64_bytes_ratio": near(0.5134679804525526, 1e-9),
    "lb_gptq_int4_g64_read_MB": near(6.702696, 1e-9),
    "lb_gptq_int4_g64_vs_dense": Claim("higher"),   # +0.14% [+0.05, +0.26]
    "lb_n_documents": exactly(31),
    "lb_n_routes": exactly(14),
    "lb_n_seeds": exactly(3),
    "lb_pareto_front": {'dense bf16, RTN int4 g64, GPTQ int4 g64, mxfp4, nvfp4, GPTQ int3 g64, W8A8 SmoothQuant, student + GPTQ int4, draft + GPTQ int4'},
    "lb_pick_batch_serving": {'W8A8 SmoothQuant'},
    "lb_pick_memory_bound_decode": {'2:4 + int4'},
    "lb_pick_no_calibration_data": {'mxfp4'},
    "lb_pick_no_training_budget": {'2:4 + int4'},
    "lb_rtn_int4_g64_MB": near(6.702696, 1e-9),
    "lb_rtn_int4_g64_bytes_ratio": near(0.5134679804525526, 1e-9),
    "lb_rtn_int4_g64_read_MB": near(6.702696, 1e-9),
    "lb_rtn_int4_g64_vs_dense": Claim("higher"),   # +0.32% [+0.20, +0.41]
    "lb_sparsegpt_2_4_MB": near(9.186944, 1e-9),
    "lb_sparsegpt_2_4_bytes_ratio": near(0.7037767462839871, 1e-9),
    "lb_sparsegpt_2_4_read_MB": near(9.186944, 1e-9),
    "lb_sparsegpt_2_4_vs_dense": Claim("higher"),   # +4.08% [+3.25, +4.63]
    "lb_sparsegpt_50_MB": near(13.053776, 1e-9),
    "lb_sparsegpt_50_bytes_ratio": near(1.0, 1e-9),
    "lb_sparsegpt_50_read_MB": near(13.053776, 1e-9),
    "lb_sparsegpt_50_vs_dense": Claim("higher"),   # +1.76% [+1.13, +2.19]
    "lb_student_3_layers_MB": near(8.62436, 1e-9),
    "lb_student_3_layers_bytes_ratio": near(0.6606793314057174, 1e-9),
    "lb_student_3_layers_read_MB": near(8.62436, 1e-9),
    "lb_student_3_layers_vs_dense": Claim("higher"),   # +23.70% [+16.90, +26.32]
    "lb_student_gptq_int4_MB": near(5.448848, 1e-9),
    "lb_student_gptq_int4_bytes_ratio": near(0.4174154666052183, 1e-9),
    "lb_student_gptq_int4_read_MB": near(5.448848, 1e-9),
    "lb_student_gptq_int4_vs_dense": Claim("higher"),   # +23.92% [+17.15, +26.53]
    "lb_w8a8_smoothquant_MB": near(8.66304, 1e-9),
    "lb_w8a8_smoothquant_bytes_ratio": near(0.663642458703137, 1e-9),
    "lb_w8a8_smoothquant_read_MB": near(8.66304, 1e-9),
    "lb_w8a8_smoothquant_vs_dense": Claim("higher"),   # +0.04% [+0.02, +0.05]
    "lb_eval_size": {'every scorable token of the test split'},
    "sample_covers_split": Is(True),
    "sample_equal_documents_ppl": near(35.09872997783289, 1e-4),
    "sample_ppl": near(58.713892157569546, 1e-4),
    "sample_ppl_high": near(87.61418075863652, 1e-4),
    "sample_ppl_low": near(41.270943836944205, 1e-4),
    "sample_tokens": exactly(8192),
    "sample_within_20pct_of_split": Is(True),
    "whole_split_ppl": near(51.93964963046673, 1e-9),   # the committed record's dense row
    "lb_2_4_int4_dominated_by": {'GPTQ int3 g64'},
    "lb_dense_bf16_dominated_by": {'no route'},
    "lb_draft_2_layers_dominated_by": {'RTN int4 g64, GPTQ int4 g64, mxfp4, nvfp4, GPTQ int3 g64, 2:4 + int4'},
    "lb_draft_gptq_int4_dominated_by": {'no route'},
    "lb_gptq_int3_g64_dominated_by": {'no route'},
    "lb_gptq_int4_g64_dominated_by": {'no route'},
    "lb_rtn_int4_g64_dominated_by": {'no route'},
    "lb_sparsegpt_2_4_dominated_by": {'RTN int4 g64, GPTQ int4 g64, mxfp4, nvfp4, GPTQ int3 g64, W8A8 SmoothQuant'},
    "lb_sparsegpt_50_dominated_by": {'dense bf16, RTN int4 g64, GPTQ int4 g64, nvfp4, W8A8 SmoothQuant'},
    "lb_student_3_layers_dominated_by": {'RTN int4 g64, GPTQ int4 g64, mxfp4, nvfp4, GPTQ int3 g64, 2:4 + int4'},
    "lb_student_gptq_int4_dominated_by": {'no route'},
    "lb_w8a8_smoothquant_dominated_by": {'no route'},
    # the FP4 routes: against dense, and against int4 in groups of 64 (one family, Holm across its four)
    "lb_mxfp4_MB": near(6.560344, 1e-9),
    "lb_mxfp4_bytes_ratio": near(0.5025629365786574, 1e-9),
    "lb_mxfp4_dominated_by": {'no route'},
    "lb_mxfp4_read_MB": near(6.560344, 1e-9),
    "lb_mxfp4_vs_dense": Claim("higher"),   # +0.61% [+0.29, +1.46]
    "lb_mxfp4_vs_gptq_int4_g64": Claim("higher"),   # +0.47% [+0.19, +1.17]
    "lb_mxfp4_vs_rtn_int4_g64": Claim("equivalent"),   # +0.29% [+0.00, +1.00]
    "lb_nvfp4_MB": near(6.702672, 1e-9),
    "lb_nvfp4_bytes_ratio": near(0.5134661419040744, 1e-9),
    "lb_nvfp4_dominated_by": {'no route'},
    "lb_nvfp4_read_MB": near(6.702672, 1e-9),
    "lb_nvfp4_vs_dense": Claim("equivalent"),   # +0.30% [-0.27, +0.51]
    "lb_nvfp4_vs_gptq_int4_g64": Claim("equivalent"),   # +0.15% [-0.47, +0.36]
    "lb_nvfp4_vs_rtn_int4_g64": Claim("equivalent"),   # -0.02% [-0.62, +0.26]
}
