"""Shared test set-up: offline, headless and deterministic, whether or not `make` started pytest."""

import os
from pathlib import Path

import pytest

# Set before any test imports transformers/datasets/matplotlib (the Makefile exports the same).
for _name, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                      "MPLBACKEND": "Agg", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_name, _value)

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
