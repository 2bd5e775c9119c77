"""Suite ``calibration`` (`lab.quant.calibration`): its sizes, its methods change a tiny GPT, it refuses a GPU,
and its comparisons."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lab.models.next_token import calibration_windows
from lab.quant.calibration import METHODS, SIZES, run, size_comparisons
from tests.tiny_models import tiny_gpt

IDS = torch.randint(0, 61, (5000,), generator=torch.Generator().manual_seed(0))


def test_sizes_double_from_512_to_131072_tokens():
    assert SIZES[0] == 512 and SIZES[-1] == 131_072
    assert all(b == 2 * a for a, b in zip(SIZES, SIZES[1:]))


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_changes_a_tiny_gpt(name):
    widths = {"d_model": 64, "d_ff": 128} if name == "GPTQ w3" else {}   # groups of 64 need 64-wide inputs
    before = tiny_gpt(**widths)
    model = copy.deepcopy(before)
    METHODS[name](model, calibration_windows(torch.randint(0, 61, (600,)), 256, 16, seed=0))
    changed = [not torch.equal(a, b) for a, b in zip(model.parameters(), before.parameters())]
    assert any(changed), name


def test_the_suite_refuses_a_gpu():
    with pytest.raises(ValueError, match=r"device='cuda'.*runs on the cpu"):
        run(torch.device("cuda"))


def test_size_comparisons_compare_every_size_with_fp32_and_with_the_largest():
    rng = np.random.default_rng(0)
    sizes = np.full(5, 10)
    runs = {"fp32": rng.normal(30, 1, (3, 5))}
    runs |= {f"Wanda 50% · {n}": runs["fp32"] + 3 / n + rng.normal(0, 1e-3, (3, 5)) for n in (512, 1024, 2048)}
    vs_fp32, vs_largest = size_comparisons(runs, sizes, "Wanda 50%", "wanda")
    assert list(vs_fp32) == ["wanda_512_vs_fp32", "wanda_1024_vs_fp32", "wanda_2048_vs_fp32"]
    assert list(vs_largest) == ["wanda_512_vs_2048", "wanda_1024_vs_2048"]
    assert vs_largest["wanda_512_vs_2048"]["delta_log_ppl"] > vs_largest["wanda_1024_vs_2048"]["delta_log_ppl"] > 0
    with pytest.raises(ValueError, match=r"method='GPTQ w3'"):
        size_comparisons(runs, sizes, "GPTQ w3", "gptq")
    with pytest.raises(ValueError, match=r"method='RTN'"):
        size_comparisons(runs, sizes, "RTN", "rtn")
