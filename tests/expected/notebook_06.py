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
}
