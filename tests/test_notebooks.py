"""Regression runs of every notebook: execute it with papermill, then check its headline metrics.

Each notebook records the numbers its text states with ``lab.report.record(name, value)``.
This test executes the notebook (its ``parameters`` cell holds small CPU defaults;
``PARAMETERS`` below can override them per notebook), reads the metrics JSON written next
to the executed copy, and checks every metric in ``EXPECTED``. A notebook without an
``EXPECTED`` entry, or a metric that was not recorded, fails the test.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import report

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
}

# Per-notebook papermill parameter overrides (empty: use the notebook's own defaults).
PARAMETERS: dict[str, dict] = {}


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
    # the kernel's working directory is notebooks/; make `import lab` work there
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(NOTEBOOK_DIR.parent),
                                                                   os.environ.get("PYTHONPATH")])))
    papermill.execute_notebook(
        str(notebook), str(tmp_path / notebook.name),
        parameters=PARAMETERS.get(notebook.stem, {}), kernel_name=KERNEL, cwd=str(NOTEBOOK_DIR),
        execution_timeout=CELL_TIMEOUT_S, progress_bar=False)

    metrics = report.read(metrics_path)
    failures = []
    for name, tolerance in EXPECTED.get(notebook.stem, {}).items():
        if name not in metrics:
            failures.append(f"{name}: not recorded (recorded: {sorted(metrics)})")
        elif metrics[name] not in tolerance:
            failures.append(f"{name}: {metrics[name]!r} not in {tolerance}")
    assert not failures, f"{notebook.name}:\n  " + "\n  ".join(failures)

