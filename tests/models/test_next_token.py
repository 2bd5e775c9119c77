"""`lab.models.next_token.calibration_windows`: the notebooks' calibration windows, drawn by size and seed (its
bad input: tests/models/test_bad_input.py)."""

from __future__ import annotations

import torch

from lab.models.next_token import calibration_windows, random_batch

IDS = torch.randint(0, 61, (5000,), generator=torch.Generator().manual_seed(0))


def test_the_4096_token_windows_are_the_notebooks_calibration_windows():
    ours = calibration_windows(IDS, 4096, 128, seed=2)
    notebooks = random_batch(IDS, 32, 128, torch.Generator().manual_seed(2))[0]
    assert ours.shape == (32, 128) and torch.equal(ours, notebooks)
