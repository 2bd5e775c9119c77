"""The metrics `notebooks/05_distributed_training.ipynb` records, each with what it must satisfy."""

from __future__ import annotations

from tests.expected.matchers import Below, Between, Claim, Is, Timing, exactly, near

METRICS: dict[str, object] = {
    # every strategy reproduces the single-process loss curve
    **{f"loss_max_abs_diff_{s}": Below(1e-5)
       for s in ("ddp", "torch_ddp", "zero1", "zero2", "zero3", "tp", "pp")},
    "ddp_equals_torch_ddp_losses": Is(True),
    "single_final_loss": near(7.379, 0.01),
    # measured traffic and per-rank memory equal the formulas
    **{f"traffic_ratio_{s}": near(1.0, 1e-3) for s in ("ddp", "zero1", "zero2", "zero3", "tp", "pp")},
    **{f"memory_ratio_stage{k}": near(1.0, 1e-3) for k in range(4)},
    "bubble_gpipe_m8": Between(3 / 11, 0.5),  # formula 0.273; measured with sleeping stages
    "bubble_1f1b_m8": Between(3 / 11, 0.5),
    "bubble_formula_m8": near(3 / 11, 1e-9),
    "tiny_n_parameters": exactly(616_768),
    "loss_max_abs_diff_all": Below(1e-5),    # measured 9.5e-7 to 1.9e-6 (1 to 2 ulp of the loss)
    **{f"payload_MB_per_step_{s}": near(v, 1e-9) for s, v in (
        ("ddp", 2.467072), ("zero1", 4.934144), ("zero2", 4.934144), ("zero3", 7.401216),
        ("tp", 1.048576), ("pp", 2.359296))},
    "traffic_max_abs_diff_bytes": exactly(0),
    # bytes each rank sends by the ring formula: ZeRO 1-2 as much as DDP, ZeRO 3 1.5 times (N = 2)
    **{f"sent_MB_per_step_{s}": near(v, 1e-9) for s, v in (
        ("ddp", 2.467072), ("zero1", 2.467072), ("zero2", 2.467072), ("zero3", 3.700608),
        ("tp", 1.048576), ("pp", 2.228224))},
    **{f"memory_MB_stage{k}": near(v, 1e-9)
       for k, v in enumerate((9.868288, 7.401216, 6.16768, 4.934144))},
    "memory_max_abs_diff_bytes": exactly(0),
    # peak of training state within a step (ZeroOptimizer.peak_bytes; DDP: held + bucket buffers), rank 0
    **{f"peak_MB_stage{k}": near(v, 1e-9)
       for k, v in enumerate((12.33536, 10.547328, 10.362496, 11.226368))},
    "tiny_root_unit_share": near(524_352 / 616_768, 1e-12),
    "scaling_speedup_2": Timing(),                    # processes share 2 cores
    "scaling_speedup_4": Timing(),
    **{f"plan_{name}_GB": near(v, 1e-3) for name, v in (
        ("7b_dp8_zero0", 109.484), ("7b_dp64_zero1", 29.868), ("70b_dp8_zero3", 144.470),
        ("70b_tp8_dp8_zero1", 48.237))},
    **{f"plan_{name}_fits": Is(v) for name, v in (
        ("7b_dp8_zero0", False), ("7b_dp8_zero1", True), ("7b_dp64_zero1", True),
        ("70b_dp8_zero3", False), ("70b_tp8_dp8_zero1", True), ("70b_tp8_pp4_dp16", True))},
    # step = compute at an HFU of 40% (bubble included) + tensor-parallel all-reduces + unhidden DP traffic
    **{f"plan_{name}_days_per_T": near(v, 1e-3) for name, v in (
        ("7b_dp8_zero0", 197.19), ("7b_dp8_zero1", 197.19), ("7b_dp64_zero1", 24.958),
        ("70b_dp8_zero3", 2018.15), ("70b_tp8_dp8_zero1", 296.70), ("70b_tp8_pp4_dp16", 38.602))},
    "plan_7b_dp64_zero1_compute_s": near(8.9325, 1e-3),
    "plan_7b_dp64_zero1_dp_comm_s": near(0.53078, 1e-3),
    "plan_7b_dp64_zero1_dp_exposed_s": near(0.11206, 1e-3),
    "plan_7b_dp64_zero1_micro_batches": exactly(16),
    "plan_70b_tp8_pp4_dp16_compute_s": near(11.963, 1e-3),
    "plan_70b_tp8_pp4_dp16_tp_comm_s": near(2.0043, 1e-3),
    "plan_70b_tp8_pp4_dp16_step_s": near(13.989, 1e-3),
    "plan_7b_dp8_zero1_mfu": near(0.3, 1e-9),                         # 0.75 · HFU 40%, no comm
    "plan_70b_tp8_pp4_dp16_mfu": near(0.24507, 1e-3),                 # 6Ψ per token, PaLM's MFU
    "plan_70b_tp8_pp4_dp16_hfu": near(0.32676, 1e-3),                 # 8Ψ: recomputation counted
    "plan_70b_tp8_pp4_dp16_mfu_without_tp_comm": near(0.28605, 1e-3),
    "plan_70b_tp8_pp4_dp16_bubble": near(3 / 67, 1e-6),
    "plan_70b_tp8_pp4_dp16_micro_batches": exactly(64),
    "max_in_flight_gpipe": exactly(8),
    "max_in_flight_1f1b": exactly(4),
    "plan_7b_dp8_zero1_GB": near(38.71, 1e-3),
    "plan_70b_tp8_pp4_dp16_GB": near(11.05, 1e-3),
    # the H100 figures the plan assumes: datasheet peaks (lab.parallel.formulas.H100_SXM.source)
    **{f"h100_{name}": near(v, 1e-9) for name, v in (
        ("memory_GB", 80), ("bf16_TFLOPs", 989), ("nvlink_GBps", 450), ("ib_GBps", 50))},
    # the executed exercise solutions (the notebook's last section, book page's Exercises)
    # 1F1B, N_p = 4, m = 8: peak micro-batches in flight per stage, min(N_p - s, m)
    "ex_1f1b_peak_stage0": exactly(4),
    "ex_1f1b_peak_stage1": exactly(3),
    "ex_1f1b_peak_stage2": exactly(2),
    "ex_1f1b_peak_stage3": exactly(1),
    "ex_1f1b_peaks_match": Is(True),
    # interleaved 1F1B on the ideal simulated pipeline: (N_p-1)/(v m) and (N_p-1)/(v m + N_p - 1)
    "ex_interleaved_extra_v1": near(3 / 8, 1e-9),
    "ex_interleaved_extra_v2": near(3 / 16, 1e-9),
    "ex_interleaved_extra_v4": near(3 / 32, 1e-9),
    "ex_interleaved_bubble_v1": near(3 / 11, 1e-9),
    "ex_interleaved_bubble_v2": near(3 / 19, 1e-9),
    "ex_interleaved_bubble_v4": near(3 / 35, 1e-9),
    "ex_interleaved_peak_stage0_v2": exactly(5.5),
    # smallest_plans: Llama-2-70B, 2T tokens, 30 days, HFU 40% while computing (TP and unhidden DP comm added)
    "ex_plan70b_gpus": exactly(2048),
    "ex_plan70b_tp": exactly(4),
    "ex_plan70b_pp": exactly(1),
    "ex_plan70b_dp": exactly(512),
    "ex_plan70b_zero": exactly(1),
    "ex_plan70b_micro_batches": exactly(2),
    "ex_plan70b_days": near(18.638497428413103, 1e-9),
    "ex_plan70b_mfu": near(0.25377775525923907, 1e-9),
    "ex_plan70b_gpus_hfu30": exactly(2048),
    "ex_plan70b_gpus_hfu50": exactly(1280),
    "ex_plan70b_1280_days": near(32.87734685320654, 1e-9),      # fewest by compute alone, with its TP comm: > 30 days
    "ex_plan70b_gpu_bound": near(1076.345978604152, 1e-9),
    # context parallelism (section 9): ring and all-gather attention against full causal attention in float64
    "cp_ranks": exactly(4),
    "cp_max_abs_err": Below(1e-12),
    "cp_sent_equals_formula": Is(True),
    "cp_ring_over_allgather_sent": near(1.5, 1e-12),       # (1 + 2)(N_c - 1)|KV| against (1 + 1)(N_c - 1)|KV|
    "cp_allgather_over_ring_kept": near(4.0, 1e-12),       # N_c blocks of K and V against one
    # lock-step attention time over the balanced time, T = 131,072, N_c = 4: (2N_c - 1)/N_c in the limit
    "cp_lockstep_over_balanced_contiguous": near(1.749994277997757, 1e-9),
    "cp_lockstep_over_balanced_zigzag": exactly(1.0),
    "cp_lockstep_limit_contiguous": near(1.75, 1e-12),
    # the exercise: T/N_c at which a zig-zag step's forward products cover one K/V block, sigma F / (g beta)
    "ex_cp_tokens_nvlink": near(2 * 989e12 / (8 * 450e9), 1e-9),
    "ex_cp_tokens_ib": near(2 * 989e12 / (8 * 50e9), 1e-9),
    "ex_cp_tokens_nvlink_mha": near(2 * 989e12 / 450e9, 1e-9),
    "ex_cp_tokens_ib_mha": near(2 * 989e12 / 50e9, 1e-9),
    # FP8 training (section 8): every comparison reads the record results/fp8-training_cpu.json (3 seeds)
    "fp8_steps": exactly(30),
    "fp8_current_vs_bf16": Claim("equivalent", -0.5, 0.5),     # +0.05% [-0.00, +0.13]
    "fp8_delayed_vs_bf16": Claim("equivalent", -0.5, 0.5),     # +0.02% [-0.01, +0.04]
    "fp8_unscaled_vs_bf16": Claim("lower", -0.5, 0.0),         # -0.08% [-0.13, -0.03]
    "fp8_unscaled_grad_flushed": near(0.507, 0.01),
    "fp8_delayed_grad_flushed": near(0.0169, 0.01),            # nearly all in its first step, at s = 1
    "fp8_current_grad_flushed": near(3.24e-5, 0.02),
    "fp8_max_loss_diff": Between(0.0, 0.02),                   # 0.0069 nats
    "fp8_bf16_vs_pretrained_pct": near(1.592, 0.01),
    # gradient accumulation (section 10): one all-reduce per optimizer step under no_sync, k = 4
    "accum_calls_no_sync": exactly(1),
    "accum_calls_every": exactly(4),
    "accum_payload_is_4psi": Is(True),
    "accum_sent_ratio": near(4.0, 1e-12),
    "accum_max_grad_diff": Below(1e-6),                        # 1.9e-9: the same terms summed in another order
    # tp x dp and pp x dp on 4 ranks (section 11)
    **{f"loss_max_abs_diff_{s}": Below(1e-5) for s in ("tpxdp", "ppxdp")},
    **{f"traffic_ratio_{s}": near(1.0, 1e-3) for s in ("tpxdp", "ppxdp")},
    "payload_MB_per_step_tpxdp": near(2.80704, 1e-9),
    "payload_MB_per_step_ppxdp": near(4.510208, 1e-9),
    # exercise: delayed scaling behind a tensor whose amax doubles every step
    "ex_delayed_saturated_predicted": near(1 - 464 / 896, 1e-12),
    "ex_delayed_saturated_measured": near(1 - 464 / 896, 0.01),
    "ex_current_saturated": exactly(0.0),
}
