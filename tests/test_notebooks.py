"""Regression runs of every notebook: execute it once with papermill, then check that one copy twice.

Each notebook records the numbers its text states with ``lab.report.record(name, value)``.
This test executes the notebook (its ``parameters`` cell holds small CPU defaults), reads the
metrics JSON written next to the executed copy and checks every metric in ``EXPECTED`` (a
notebook without an ``EXPECTED`` entry, or a metric that was not recorded, fails), then compares
the executed copy's outputs with the outputs stored in the repository under nbval's rules
(`tests/notebook_outputs.py`: the sanitizers of tests/nbval_sanitize.cfg, the
``nbval-ignore-output`` tag). A stored output that no longer reproduces fails, as
``pytest --nbval`` would; `make outputs` refreshes them.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import report
from tests.notebook_outputs import differences

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL = "python3"
CELL_TIMEOUT_S = 600


@dataclass(frozen=True)
class Between:
    """lo <= value <= hi (inclusive)."""

    lo: float
    hi: float

    def __contains__(self, value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value) and self.lo <= value <= self.hi

    def __str__(self) -> str:
        return f"[{self.lo}, {self.hi}]"


def exactly(target: float) -> Between:
    return Between(target, target)


def near(target: float, rel: float) -> Between:
    """|value − target| <= rel·|target|."""
    return Between(target - rel * abs(target), target + rel * abs(target))


@dataclass(frozen=True)
class Is:
    """value is exactly this bool (a yes/no check the notebook records)."""

    expected: bool

    def __contains__(self, value) -> bool:
        return value is self.expected

    def __str__(self) -> str:
        return f"is {self.expected}"


# ============================================================================================
# EXPECTED: {notebook stem: {metric name: tolerance}} -- one entry per notebook, checked after
# every papermill run with the notebook's default (small, CPU) parameters.
# ============================================================================================
EXPECTED: dict[str, dict] = {
    "01_parameter_management": {
        # the real pretrained LM, identical through transformers and lab.models.GPT
        "n_parameters": exactly(6_524_160),
        "embedding_fraction": near(8192 * 256 / 6_524_160, 1e-9),
        "lab_vs_transformers_max_abs_logit_diff": Between(0.0, 1e-4),
        "pretrained_perplexity": near(29.24, 0.02),  # first 8192 tokens of the evaluation slice
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
        # parameter sharing: exact unique-parameter counts, and perplexities of a seeded short run
        "sharing_untied_n_params": exactly(2_835_584),
        "sharing_tied_n_params": exactly(1_787_008),
        "sharing_albert_n_params": exactly(1_233_280),
        "sharing_untied_val_ppl": near(380.6, 0.10),
        "sharing_tied_val_ppl": near(518.4, 0.10),
        "sharing_albert_val_ppl": near(809.8, 0.10),
    },
    "02_pruning": {
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
        # the published ordering: SparseGPT below magnitude at every sparsity >= 50%; Wanda level with it here
        "sparsegpt_below_magnitude_from_50": Is(True),
        "wanda_over_magnitude_50": Between(0.97, 1.03),
        "structured_0.25_params": exactly(5_418_240),
        "structured_0.5_params": exactly(4_312_320),
        "compress_24_roundtrip_exact": Is(True),
    },
    "03_quantization": {
        "dense_perplexity": near(29.24, 0.02),
        # the grid: bit-exact with PyTorch, |error| <= s/2 (up to float rounding), MSE = s²/12
        "fake_quantize_equals_torch": Is(True),
        "max_error_over_half_scale": Between(0.9, 1.0001),
        "mse_over_s2_12": Between(0.9, 1.1),                  # measured 0.996
        "group_over_tensor_mse_4bit": Between(0.1, 0.5),      # measured 0.244
        "observer_mse_over_minmax_4bit": Between(0.1, 0.6),   # measured 0.280
        # RTN vs GPTQ: GPTQ's layer error ~1/3 of RTN's everywhere; perplexity below RTN at 3 and 2 bits
        "gptq_layer_error_below_rtn_everywhere": Is(True),
        "gptq_below_rtn_at_3_and_2_bits": Is(True),
        "layer_error_gptq_over_rtn_4_group": Between(0.2, 0.45),   # measured 0.324
        "layer_error_gptq_over_rtn_3_channel": Between(0.2, 0.45),  # measured 0.329
        "ppl_ratio_rtn_8_group": Between(0.999, 1.002),
        "ppl_ratio_rtn_3_channel": Between(1.005, 1.03),   # measured 1.014
        "ppl_ratio_gptq_3_channel": Between(1.0, 1.015),   # measured 1.008
        "ppl_ratio_rtn_2_group": Between(1.06, 1.15),      # measured 1.100
        "ppl_ratio_gptq_2_group": Between(1.02, 1.08),     # measured 1.053
        "awq_layer_error_not_above_rtn": Is(True),
        # activation outliers: the encoder has them, the LM does not; SmoothQuant helps W8A8
        "lm_activation_max_over_median": Between(1.5, 4.0),       # measured 2.45
        "encoder_outlier_max_over_median": Between(10.0, 20.0),   # measured 14.5
        "encoder_smoothed_max_over_median": Between(3.0, 8.0),    # measured 5.34
        "encoder_w8a8_tensor_error": Between(0.008, 0.03),        # measured 0.0168
        "encoder_w8a8_token_error": Between(0.001, 0.004),        # measured 0.0021
        "smoothquant_gain_token": Between(1.2, 2.5),              # measured 1.73
        "smoothquant_gain_tensor": Between(1.05, 2.0),            # measured 1.31
        "lm_w8a8_token_ppl_ratio": Between(0.999, 1.003),
        "lm_w8a8_tensor_ppl_ratio": Between(0.999, 1.006),
        # QAT at 2 bits beats RTN and the fine-tune-then-round control
        "qat_over_rtn": Between(0.94, 0.995),                     # measured 0.978
        "qat_over_finetune_then_rtn": Between(0.93, 0.995),       # measured 0.968
        # packing: the packed int4 model computes the fake-quantized model's logits
        "int4_packed_logits_max_abs_diff": Between(0.0, 1e-4),
        "int4_disk_over_bf16": Between(0.45, 0.56),               # measured 0.514
    },
    "04_distillation": {
        "teacher_perplexity": near(40.59, 0.02),  # 2048 tokens, windows of 256 moved by 255
        "kd_loss_matches_reference": Is(True),
        # at equal steps, KD beats hard labels for every student and initialisation
        "kd_beats_hard_everywhere": Is(True),
        "teacher_init_beats_random": Is(True),
        "ppl_3_hard_teacher": near(79.26, 0.10),
        "ppl_3_kd_teacher": near(66.36, 0.10),
        "ppl_3_kd+hidden_teacher": near(64.69, 0.10),
        "ppl_2_hard_teacher": near(145.95, 0.10),
        "ppl_2_kd_teacher": near(118.08, 0.10),
        "kd_gain_3_teacher": Between(1.08, 1.35),  # hard ppl / KD ppl, measured 1.194
        "kd_gain_3_random": Between(1.15, 1.6),    # measured 1.341
        "kd_gain_2_teacher": Between(1.1, 1.4),    # measured 1.236
        "hidden_over_kd_3_teacher": Between(0.9, 1.05),
        "student_3_params": exactly(4_310_784),
        "student_2_params": exactly(3_572_992),
        "retained_ce_ratio_3": near(0.888, 0.03),
        "retained_ce_ratio_2": near(0.776, 0.03),
        "grid_worst_over_best": Between(1.02, 1.3),
        "encoder_teacher_accuracy": Between(0.85, 0.96),
        "encoder_student_kd_accuracy": Between(0.80, 0.95),
        "encoder_student_kd_retained": Between(0.88, 1.05),
        "encoder_params_ratio": near(0.68753, 1e-4),
    },
    "05_distributed_training": {
        # every strategy reproduces the single-process loss curve
        **{f"loss_max_abs_diff_{s}": Between(0.0, 1e-4)
           for s in ("ddp", "torch_ddp", "zero1", "zero2", "zero3", "tp", "pp")},
        "ddp_equals_torch_ddp_losses": Is(True),
        "single_final_loss": near(7.379, 0.01),
        # measured traffic and per-rank memory equal the formulas
        **{f"traffic_ratio_{s}": near(1.0, 1e-3) for s in ("ddp", "zero1", "zero2", "zero3", "tp", "pp")},
        **{f"memory_ratio_stage{k}": near(1.0, 1e-3) for k in range(4)},
        "bubble_gpipe_m8": Between(0.25, 0.5),  # formula 0.273; measured with sleeping stages
        "bubble_1f1b_m8": Between(0.25, 0.5),
        "max_in_flight_gpipe": exactly(8),
        "max_in_flight_1f1b": exactly(4),
        "plan_7b_dp8_zero1_GB": near(38.71, 1e-3),
        "plan_70b_tp8_pp4_dp16_GB": near(11.05, 1e-3),
    },
    "06_inference": {
        # the cache changes the cost, not the numbers; generation equals transformers'; scheduling is exact
        "cached_vs_uncached_max_abs_logit_diff": Between(0.0, 1e-4),   # measured 9.5e-6
        "greedy_equals_transformers": Is(True),
        "serve_outputs_equal_generate": Is(True),
        "speculative_greedy_exact": Is(True),
        # memory and batching on the trace (deterministic counts)
        "static_cache_utilization": near(0.28870, 1e-4),
        "paged_cache_utilization": near(0.91809, 1e-4),
        "steps_static_over_continuous_b4": Between(1.2, 1.6),          # measured 1.394
        "steps_static_over_continuous_b16": Between(1.2, 1.6),         # measured 1.370
        "utilization_continuous_b4": Between(0.9, 1.0),                # measured 0.952
        # speculative decoding: acceptance, tokens per target pass vs (1 − α^{k+1})/(1 − α)
        "alpha_teacher_forced": near(0.8245, 0.01),
        "greedy_agreement_teacher_forced": near(0.7710, 0.01),
        "spec_alpha_k4": Between(0.7, 0.88),                           # measured 0.783
        "spec_tokens_per_pass_k4": Between(2.6, 3.8),                  # measured 3.10
        "spec_formula_ratio_k4": Between(0.85, 1.15),                  # measured 0.952
        # exactness tests: pass for exact samplers, fail for the uncorrected untrained draft
        "ks_pvalue_target": Between(0.001, 1.0),
        "ks_pvalue_speculative": Between(0.001, 1.0),
        "score_pvalue_target": Between(0.001, 1.0),
        "score_pvalue_speculative": Between(0.001, 1.0),
        "ks_pvalue_undistilled_draft": Between(0.0, 1e-6),
        "score_pvalue_undistilled_draft": Between(0.0, 1e-6),
        # the roofline of a 7B shape: int4 pays at batch 1, much less at batch 256 (formula)
        "int4_ceiling_gain_b1": near(2.9912, 1e-4),
        "int4_ceiling_gain_b256": near(1.0341, 1e-4),
    },
}

# Per-notebook papermill parameter overrides (empty: use the notebook's own defaults).
def test_every_notebook_has_expected_metrics_and_every_entry_a_notebook():
    stems = {nb.stem for nb in NOTEBOOKS}
    assert stems - EXPECTED.keys() == set(), "add an EXPECTED entry for these notebooks"
    assert EXPECTED.keys() - stems == set(), "EXPECTED names notebooks that do not exist"
    assert all(EXPECTED.values()), "every EXPECTED entry needs at least one metric"


def test_python3_kernel_is_this_environment():
    """papermill starts the `python3` kernelspec; it must be the interpreter running the tests."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(KERNEL)
    launcher = spec.argv[0]
    assert launcher in ("python", "python3", sys.executable), (
        f"kernel {KERNEL!r} runs {launcher}, not {sys.executable}; "
        f"run `{sys.executable} -m ipykernel install --sys-prefix --name {KERNEL}`")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_notebook_runs_and_reproduces_its_metrics(notebook: Path, tmp_path: Path, monkeypatch):
    import papermill

    metrics_path = tmp_path / f"{notebook.stem}.metrics.json"
    monkeypatch.setenv(report.ENV_VAR, str(metrics_path))  # inherited by the kernel
    monkeypatch.delenv("MPLBACKEND", raising=False)  # draw inline, as the book and nbval do
    papermill.execute_notebook(
        str(notebook), str(tmp_path / notebook.name),
        kernel_name=KERNEL, cwd=str(NOTEBOOK_DIR),
        execution_timeout=CELL_TIMEOUT_S, progress_bar=False)

    metrics = report.read(metrics_path)
    failures = []
    for name, tolerance in EXPECTED.get(notebook.stem, {}).items():
        if name not in metrics:
            failures.append(f"{name}: not recorded (recorded: {sorted(metrics)})")
        elif metrics[name] not in tolerance:
            failures.append(f"{name}: {metrics[name]!r} not in {tolerance}")
    failures += [f"stored output differs: {d}" for d in differences(notebook, tmp_path / notebook.name)]
    assert not failures, f"{notebook.name}:\n  " + "\n  ".join(failures)

