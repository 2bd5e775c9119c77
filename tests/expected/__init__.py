"""EXPECTED: {notebook stem: {metric name: what it must satisfy}}, one module per notebook, checked after every
papermill run of the notebook with its default (small, CPU) parameters (tests/test_notebooks.py)."""

from __future__ import annotations

from tests.expected import (notebook_01, notebook_01b, notebook_02, notebook_03, notebook_04, notebook_05, notebook_06,
                            notebook_07)

EXPECTED: dict[str, dict] = {
    "01_parameter_management": notebook_01.METRICS,
    "01b_training_with_fewer_bytes": notebook_01b.METRICS,
    "02_pruning": notebook_02.METRICS,
    "03_quantization": notebook_03.METRICS,
    "04_distillation": notebook_04.METRICS,
    "05_distributed_training": notebook_05.METRICS,
    "06_inference": notebook_06.METRICS,
    "07_putting_it_together": notebook_07.METRICS,
}
