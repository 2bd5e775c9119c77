"""The metrics `notebooks/06_inference.ipynb` records, each with what it must satisfy."""

from __future__ import annotations

from tests.expected.matchers import Below, Between, Claim, Is, Timing, exactly, near

METRICS: dict[str, object] = {
    # the cache changes the cost, not the numbers; generation equals transformers'; scheduling is exact
    "cached_vs_uncached_max_abs_logit_diff": Below(1e-4),          # measured 9.5e-6
    "greedy_equals_transformers": Is(True),
    "serve_outputs_equal_generate": Is(True),                       # served with the model at B = 16 (SERVE_RUN)
    "serve_steps_equal_schedule": Is(True),                         # those runs take the dry run's steps
    "speculative_greedy_exact": Is(True),
    # memory and batching on the trace (deterministic counts)
    "static_cache_utilization": near(0.28870, 1e-4),
    "paged_cache_utilization": near(0.91809, 1e-4),
    "steps_static_over_continuous_b4": Between(1.2, 1.6),          # measured 1.394
    "steps_static_over_continuous_b16": Between(1.2, 1.6),         # measured 1.370
    "utilization_continuous_b4": Between(0.9, 1.0),                # measured 0.952
    # the pair on the evaluation sample (8,192 tokens, every test document): perplexities, α, argmax agreement
    "eval_sample_tokens": exactly(8192),
    "target_perplexity": near(58.7139, 1e-4),
    "draft_perplexity": near(68.2788, 1e-4),
    "draft_vs_target_ppl": Claim("higher"),                        # measured +16.3% (+14.1% to +19.3%)
    "alpha_teacher_forced": near(0.7929, 0.01),
    "greedy_agreement_teacher_forced": near(0.7158, 0.01),
    # speculative decoding: acceptance, tokens per target pass vs (1 − α^{k+1})/(1 − α)
    "spec_alpha_k4": Between(0.7, 0.88),                           # measured 0.801
    "spec_tokens_per_pass_k4": Between(2.6, 3.8),                  # measured 3.25
    "spec_formula_ratio_k4": Between(0.85, 1.15),                  # measured 0.966
    # exactness tests: pass for exact samplers, fail for the uncorrected untrained draft
    "ks_pvalue_target": Between(0.001, 1.0),
    "ks_pvalue_speculative": Between(0.001, 1.0),
    "score_pvalue_target": Between(0.001, 1.0),
    "score_pvalue_speculative": Between(0.001, 1.0),
    "ks_pvalue_undistilled_draft": Below(1e-6),
    "score_pvalue_undistilled_draft": Below(1e-6),
    # the distilled draft alone on this prompt: the KS test misses it, the score test does not
    "ks_pvalue_distilled_draft": Between(0.01, 1.0),               # measured 0.11
    "score_pvalue_distilled_draft": Below(1e-6),
    "score_z_distilled_draft": Between(-8, -3),                    # measured -5.29
    # the roofline of a 7B shape: int4 pays at batch 1, much less at batch 256 (formula)
    "int4_ceiling_gain_b1": near(2.9912, 1e-4),
    "int4_ceiling_gain_b256": near(1.0341, 1e-4),
    "prefill_crossover_tokens_7b": exactly(294),                   # bf16, H100 SXM5 datasheet
    # figures the chapter page glues
    "steps_static_over_continuous_b2": Between(1.1, 1.4),          # measured 1.223
    "steps_static_over_continuous_b8": Between(1.4, 1.8),          # measured 1.622
    "steps_static_over_continuous_min": Between(1.1, 1.6),
    "steps_static_over_continuous_max": Between(1.3, 1.8),
    "utilization_static_b4": Between(0.6, 0.75),                   # measured 0.6825
    "spec_alpha_min": Between(0.65, 0.8),
    "spec_alpha_max": Between(0.78, 0.9),
    "spec_formula_ratio_min": Between(0.85, 1.0),
    "spec_formula_ratio_max": Between(0.9, 1.0),                   # "slightly below" the formula
    "spec_cost_ratio_c": Timing(),                                 # timings of this run
    "spec_pass_cost_r_min": Timing(),
    "spec_pass_cost_r_max": Timing(),
    "spec_speedup_formula_min": Timing(),
    "spec_speedup_formula_max": Timing(),
    # paired, interleaved speed-ups (lab.infer.latency.speculative_speedups): times of this run
    "spec_timed_rounds": exactly(6),
    **{f"spec_speedup_{name}{end}": Timing() for name in ("k2", "k4", "greedy_k4") for end in ("", "_low", "_high")},
    "score_z_undistilled_draft": Between(-60, -15),
    "tokens_tested_distilled_draft": exactly(1920),
    "pvalue_exact_samplers_min": Between(0.001, 1.0),
    "pvalue_exact_samplers_max": Between(0.001, 1.0),
    "bench_cpu_ms_per_token_kv_cache_b1": Timing(),                # from results/infer_cpu.json
    "bench_cpu_ms_per_token_speculative_b1": Timing(),
    "bench_cpu_spec_acceptance": near(0.8846153846153846, 1e-12),    # the record's one prompt, greedy, k = 4
    "bench_cpu_spec_tokens_per_pass": near(3.5555555555555554, 1e-12),
    # the executed exercise solutions (the notebook's last section, book page's Exercises)
    # best k of S(k) = (1 - α^{k+1}) / ((1 - α)(ck + 1)), α = 0.6
    "ex_spec_best_k_c5": exactly(4),
    "ex_spec_best_k_c20": exactly(2),
    "ex_spec_best_k_c50": exactly(1),
    "ex_spec_best_speedup_c5": near(1.9213333333333336, 1e-9),
    "ex_spec_best_speedup_c20": near(1.4, 1e-9),
    "ex_spec_best_speedup_c50": near(1.6 / 1.5, 1e-9),
    # the notebook's draft: teacher-forced α with c = weight bytes ratio (memory bound)
    "ex_spec_c_bytes": near(0.5476554836178144, 1e-9),
    "ex_spec_best_k_ours": exactly(1),
    "ex_spec_best_speedup_ours": near(1.158478707842363, 1e-3),
    # KV cache of Llama-2-70B at 4096 tokens, bf16
    "ex_kv70b_bytes": exactly(1_342_177_280),
    "ex_kv70b_weights_GB": near(137.953296384, 1e-12),
    "ex_kv70b_batch_equal": near(137.953296384e9 / 1_342_177_280, 1e-9),
    "ex_kv70b_batch_equal_140GB": near(140e9 / 1_342_177_280, 1e-9),
    "ex_kv7b_over_70b": near(1.6, 1e-12),
    # prompt-lookup (n-gram) draft on the evaluation sample's windows, scored with the target's p
    "ex_ngram_alpha_n1": near(0.12786667237602414, 1e-3),
    "ex_ngram_alpha_n2": near(0.21036306837454538, 1e-3),
    "ex_ngram_alpha_n3": near(0.2167983156581722, 1e-3),
    "ex_ngram_greedy_n1": near(0.199232943076302, 1e-3),
    "ex_ngram_greedy_n2": near(0.30572687224669604, 1e-3),
    "ex_ngram_greedy_n3": near(0.3093727977448908, 1e-3),
    "ex_ngram_coverage_n1": exactly(0.604736328125),
    "ex_ngram_coverage_n2": exactly(0.277099609375),
    "ex_ngram_coverage_n3": exactly(0.1732177734375),
    "ex_ngram_tokens_per_pass_n2": near(1.058291524073513, 1e-3),
    # section 4, prefix caching and chunked prefill (live, deterministic: every arrival at 0)
    "prefix_serve_outputs_equal_generate": Is(True),
    "prefix_steps_equal_schedule": Is(True),
    "prefix_cached_tokens": exactly(160),                          # whole 16-token blocks of the 2 shared prompts
    "prefix_prompt_tokens": exactly(312),
    # latency under load, read from results/serving_cpu.json: measured on the CPU (5 trace seeds) and predicted
    # (H100 roofline, datasheet; 5 trace seeds), each part paired by seed at a rate below and one above capacity,
    # Holm across its 8 comparisons; ratios b/a as [Δ%, low%, high%]
    "serving_rate_below": exactly(2.0),
    "serving_rate_above": exactly(16.0),
    "cpu_capacity_static": Timing(),                               # requests / span at 16/s: recorded 9.9
    "cpu_capacity_cont": Timing(),                                 # 12.5
    "cpu_capacity_cont_chunked": Timing(),                         # 7.3
    "cpu_capacity_cont_chunked_prefix": Timing(),                  # 10.6
    "continuous_vs_static_ttft_p50_below": Claim("inconclusive"),  # recorded +1% (−7% to +10%)
    "chunked_vs_continuous_tpot_p99_below": Claim("inconclusive"), # +22% (+3% to +44%), Holm p > 0.05
    "chunked_vs_continuous_ttft_p50_below": Claim("inconclusive"),       # +73% (+22% to +146%)
    "prefix_vs_chunked_ttft_p50_below": Claim("lower"),            # −65% (−68% to −62%)
    "continuous_vs_static_ttft_p50_above": Claim("inconclusive"),         # -53% (-73% to -18%)
    "chunked_vs_continuous_tpot_p99_above": Claim("inconclusive"),       # +26% (+2% to +56%)
    "chunked_vs_continuous_ttft_p50_above": Claim("higher"),       # +320% (+173% to +546%)
    "prefix_vs_chunked_ttft_p50_above": Claim("inconclusive"),            # -49% (-81% to +36%)
    "sweep_rate": exactly(4.0),
    "sweep_small_vs_large_c_ttft_p50": Claim("higher"),            # C = 4 vs 64: +1904% (+1071% to +3331%)
    "sweep_small_vs_large_c_tpot_p99": Claim("higher"),            # +140% (+80% to +221%)
    "sweep_c_small": exactly(4),
    "sweep_c_large": exactly(64),
    # predicted: deterministic (the dry run on the roofline clock); one run re-run live against the record
    "pred_live_row_equals_record": Is(True),
    "pred_step_decode_ms": near(10.455244188656716, 1e-6),        # 32 rows at context 1,300: memory bound
    "pred_step_chunk_ms": near(10.495309182089553, 1e-6),         # + a 256-token chunk
    "pred_step_prefill_ms": near(17.565505007951465, 1e-6),       # + a whole 1,250-token prefill
    "pred_capacity_static": near(12.47396815911321, 1e-6),
    "pred_capacity_cont": near(16.09090777838421, 1e-6),
    "pred_capacity_cont_chunked": near(17.428772423356367, 1e-6),
    "pred_capacity_cont_chunked_prefix": near(18.104654203464484, 1e-6),
    "pred_serving_rate_below": exactly(8.0),
    "pred_serving_rate_above": exactly(24.0),
    "pred_continuous_vs_static_ttft_p50_below": Claim("lower"),    # −97%
    "pred_chunked_vs_continuous_tpot_p99_below": Claim("lower"),   # −16% (−19% to −14%)
    "pred_chunked_vs_continuous_ttft_p50_below": Claim("higher"),  # +61% (+57% to +66%)
    "pred_prefix_vs_chunked_ttft_p50_below": Claim("lower"),       # −65% (−67% to −64%)
    "pred_continuous_vs_static_ttft_p50_above": Claim("lower"),    # −67% (−75% to −56%)
    "pred_chunked_vs_continuous_tpot_p99_above": Claim("lower"),   # −18% (−18% to −17%)
    "pred_chunked_vs_continuous_ttft_p50_above": Claim("lower"),   # −35% (−49% to −18%)
    "pred_prefix_vs_chunked_ttft_p50_above": Claim("inconclusive"),  # −53% (−85% to +45%)
    # exercise: goodput at λ = 16/s, SLO TTFT ≤ 0.5 s, TPOT ≤ 0.05 s (means over 5 seeds, from the record)
    "ex_goodput_static": near(10.839044874862878, 1e-6),
    "ex_goodput_continuous": near(13.264791427026262, 1e-6),
    "ex_goodput_continuous_chunked": near(7.020818396186985, 1e-6),
    "ex_goodput_continuous_chunked_prefix": near(12.630833516925467, 1e-6),

    # section 5, speculation as the batch grows: live (greedy, B = 4 ragged rows, k = 4; deterministic)
    "spec_batch_greedy_equal_generate": Is(True),
    "spec_batch_live_matches_record": Is(True),              # accepted counts, row by row, = the record's
    "spec_batch_live_alpha": near(0.8454545454545455, 1e-9),
    # read from results/spec-batch_cpu.json (k = 4, τ = 1; timings of that run, paired over 4 rounds)
    "spec_batch_alpha_b1": near(0.7705286839145107, 1e-6),
    "spec_batch_alpha_b1_high": near(0.8006051713701452, 1e-6),
    "spec_batch_alpha_b1_low": near(0.7312230942175542, 1e-6),
    "spec_batch_alpha_b32": near(0.7799097065462754, 1e-6),
    "spec_batch_alpha_b32_high": near(0.8101666689687201, 1e-6),
    "spec_batch_alpha_b32_low": near(0.7430616363439736, 1e-6),
    "spec_batch_c_b1": near(0.5199812301766235, 1e-6),
    "spec_batch_c_b32": near(0.36359922465235683, 1e-6),
    "spec_batch_explained_b1": near(0.8772546714280219, 1e-6),
    "spec_batch_explained_b32": near(0.5575587880333345, 1e-6),
    "spec_batch_gain_b1": Claim("inconclusive"),                      # [-15.2%, -42.7%, +25.5%]
    "spec_batch_gain_b32": Claim("lower"),                     # [-58.5%, -65.9%, -49.5%]
    "spec_batch_pred_alpha": near(0.796351882624723, 1e-6),
    "spec_batch_pred_c_b1": near(0.08100409976358668, 1e-6),
    "spec_batch_pred_crossover_c1": exactly(180),
    "spec_batch_pred_crossover_c128": exactly(2248),
    "spec_batch_pred_crossover_formula_c1": near(179.2186123517712, 1e-6),
    "spec_batch_pred_crossover_gqa_c128": exactly(239),
    "spec_batch_pred_pays_always_c2048": Is(True),
    "spec_batch_pred_s_b1": near(2.520916900385321, 1e-6),
    "spec_batch_pred_verify_bound_c1": near(59.1834548106903, 1e-6),
    "spec_batch_r_b1": near(1.4359724006230263, 1e-6),
    "spec_batch_r_b32": near(2.1326687937000033, 1e-6),
    "spec_batch_speedup_b1": near(0.8477380237829104, 1e-6),
    "spec_batch_speedup_b1_high": near(1.2549484738449754, 1e-6),
    "spec_batch_speedup_b1_low": near(0.5726607681074649, 1e-6),
    "spec_batch_speedup_b32": near(0.41484121579402183, 1e-6),
    "spec_batch_speedup_b32_high": near(0.504919467299302, 1e-6),
    "spec_batch_speedup_b32_low": near(0.34083303470541404, 1e-6),
    "spec_batch_tokens_per_pass_b1": near(3.0843373493975905, 1e-6),
    "spec_batch_tokens_per_pass_b32": near(2.0, 1e-6),
    # exercise: the context from which speculation pays at every batch (k = 4, Llama-2-7B shape, formula)
    "ex_spec_batch_never_mha": exactly(144),
    "ex_spec_batch_never_gqa": exactly(512),
}
