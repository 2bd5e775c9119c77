"""Shared test set-up: offline, headless and deterministic, whether or not `make` started pytest."""

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Set before any test imports transformers/datasets/matplotlib (the Makefile exports the same).
for _name, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                      "MPLBACKEND": "Agg", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_name, _value)

REPO_ROOT = Path(__file__).resolve().parent.parent

# Property-based tests draw the same examples on every run (a CI failure reproduces) and have no deadline.
settings.register_profile("lab", deadline=None, derandomize=True)
settings.load_profile("lab")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tokenizer():
    """The book's LM tokenizer (byte-level BPE, from checkpoints/pydoc-gpt)."""
    from lab.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny_gpt():
    """The one tiny-GPT factory of the tests: ``tiny_gpt(seed=0, **config overrides)`` → a random lab GPT
    in eval mode (defaults in `tests.tiny_models.tiny_config`)."""
    from tests.tiny_models import tiny_gpt as make

    return make
