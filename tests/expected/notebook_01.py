"""The metrics `notebooks/01_parameter_management.ipynb` records, each with what it must satisfy."""

from __future__ import annotations

from tests.expected.matchers import Between, Claim, Is, exactly, near

METRICS: dict[str, object] = {
    # the real pretrained LM, identical through transformers and lab.models.GPT
    "n_parameters": exactly(6_524_160),
    "embedding_fraction": near(8192 * 256 / 6_524_160, 1e-9),
    "lab_vs_transformers_max_abs_logit_diff": Between(0.0, 1e-4),
    "pretrained_perplexity": near(58.71, 0.02),  # the evaluation sample: 8,192 tokens of 31 documents
    # memory model vs measurement (the issue asks for agreement within 10%)
    "adam_mixed_bytes_per_param": exactly(16),
    "training_memory_ratio_total": near(1.0, 0.10),
    "training_memory_ratio_activations": near(1.0, 0.10),
    "kv_cache_formula_over_allocated": exactly(1.0),
    # number formats, storage, offloading: from-scratch pieces agree with their references
    "fp16_underflow_fraction_unscaled": Between(0.0015, 0.006),  # measured 0.0029
    "loss_scaler_matches_gradscaler": Is(True),
    "safetensors_roundtrip_bit_exact": Is(True),
    "lazy_over_eager_extra_rss": Between(0.0, 0.8),
    "offload_modes_exact": Is(True),
    # parameter sharing: exact unique-parameter counts (fresh models), and perplexities of a seeded short run, read
    # from results/params-seeds_cpu.json's seed-0 row (the notebook re-trains only the tied model, checked against it
    # within 0.1 nats per token): the same on every CPU, 811.2 / 730.7 / 1008.4
    "sharing_untied_n_params": exactly(2_835_584),
    "sharing_tied_n_params": exactly(1_787_008),
    "sharing_albert_n_params": exactly(1_233_280),
    "sharing_untied_ppl": near(810.0, 0.10),       # on the evaluation sample, windows of 64 after 64
    "sharing_tied_ppl": near(730.7, 0.10),
    "sharing_albert_ppl": near(944.0, 0.10),
    # one family, 31 documents resampled, the record's seed-0 runs: -9.92% [-12.14, -7.64]; +38.01% [+33.68, +45.60]
    # (a live run's size moved +32% to +45% between the CPU code paths on the old slice)
    "sharing_tied_vs_untied": Claim("lower"),
    "sharing_albert_vs_tied": Claim("higher", 15.0, 70.0),
    # the same family over seeds 0, 1, 2 (results/params-seeds_cpu.json, seeds and documents resampled; read from
    # the record, so the same on every CPU): tied vs untied changes sign between seeds (perplexity 810/588/680
    # untied, 731/676/858 tied); the shared block is higher at every seed (+29%, +44%, +8%), but three seeds
    # that far apart leave the interval wide
    "sharing_tied_vs_untied_seeds": Claim("inconclusive", 9.0, 10.0),     # +9.40% [-45.74, +414.68]
    "sharing_albert_vs_tied_seeds": Claim("inconclusive", 20.0, 35.0),    # +28.63% [-18.35, +5310.90]
    "sharing_albert_over_tied_min_pct": near(7.1587, 1e-3),               # the record's, any CPU
    "sharing_albert_over_tied_max_pct": near(43.903, 1e-3),
    # figures the chapter pages glue
    # activations of a Llama-2-7B-shaped model, T = 4096, B = 1, 16 bits, 32 layers, against 16Ψ of model states
    "states_7b_GB": near(16 * 6_738_415_616 / 1e9, 1e-12),
    "act_7b_gpt3_dropout_GB": near(32 * 4096 * 4096 * (34 + 5 * 32 * 4096 / 4096) / 1e9, 1e-12),   # 104.2
    "act_7b_gpt3_no_dropout_GB": near(32 * 4096 * 4096 * (32 + 2 * 32 * 4096 / 4096) / 1e9, 1e-12),  # 51.5
    "act_7b_llama_GB": near(32 * 2 * 4096 * (8 * 4096 + 4 * 11008 + 32 * 4096) / 1e9, 1e-12),      # 54.5
    "act_7b_llama_fused_GB": near(32 * (2 * 4096 * (8 * 4096 + 4 * 11008) + 4 * 32 * 4096) / 1e9, 1e-12),
    "psi_layer": exactly(737_792),                     # one decoder layer of pydoc-gpt, norms included
    "kv_mha_outgrows_weights_T": near(3213.127, 1e-6),
    "kv_gqa_outgrows_weights_T": near(12852.508, 1e-6),
    "bf16_underflow_fraction_unscaled": exactly(0.0),
    "lazy_checkpoint_MB": near(142.66, 1e-3),
    "eager_extra_rss_MB": Between(150, 500),           # RSS: varies run to run
    "lazy_extra_rss_MB": Between(60, 300),
    "eager_minus_lazy_rss_over_checkpoint": Between(0.6, 1.4),
    # the data page's figures, read from the committed checkpoints' training_record.json
    **{name: near(v, 1e-9) for name, v in (
        ("lm_train_minutes", 41.188727611), ("lm_tokens_seen_M", 4.096),
        ("lm_passes_over_train", 1.579290930759891), ("lm_val_ppl_first", 133.31669475756212),
        ("lm_val_ppl_last", 47.26437481510782), ("lm_eval_slice_ppl", 48.44540578786965),
        ("draft_train_minutes", 16.321202690949995), ("draft_ppl_before", 167.92028674856633),
        ("draft_ppl", 35.515833826914985))},
    **{name: exactly(v) for name, v in (
        ("lm_val_ppl_first_step", 200), ("lm_val_ppl_last_step", 1000),
        ("lm_eval_slice_tokens", 32_768), ("draft_n_parameters", 3_572_992),
        ("draft_embedding_parameters", 8192 * 256), ("draft_eval_tokens", 8192))},
    # the executed exercise solutions (the notebook's last section, book page's Exercises)
    # ex-01-vocab: V C = L·Ψ_layer + C  →  V = (6·737,792 + 256)/256 = 17,293; counted on the meta device
    "ex_vocab_half": exactly(17_293),
    "ex_vocab_embedding_fraction": exactly(0.5),
    # ex-01-kv-serving: Llama-2-70B shape, T = 4096: 2·80·8·128·4096·σ bytes per sequence in 80e9 bytes
    "ex_kv_sequences_bf16": exactly(59),
    "ex_kv_sequences_8bit": exactly(119),
    # ex-01-bf16-rounding: 1 + 2^-8 is a tie → 1 (even); 1 + 3·2^-9 → 1 + 2^-7
    "ex_bf16_round_tie": exactly(1.0),
    "ex_bf16_round_above_tie": exactly(1.0078125),
    "ex_bf16_lab_equals_torch": Is(True),
}
