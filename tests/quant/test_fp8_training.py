"""Suite ``fp8-training`` (`lab.quant.fp8_training`): one run per recipe, each training a tiny GPT and recording its
loss curve and counters in the order the seeds run; the suite refuses a GPU."""

from __future__ import annotations

import copy

import pytest
import torch

from lab.quant.fp8_linear import RECIPES
from lab.quant.fp8_training import QUICK, methods, run
from tests.tiny_models import tiny_gpt

TRAIN = torch.randint(0, 61, (400,), generator=torch.Generator().manual_seed(1))
TINY = {**QUICK, "seq": 8}                                     # windows that fit the tiny GPT's 16 positions


def test_every_recipe_trains_a_copy_and_records_its_curve_per_seed():
    curves: dict[str, list] = {}
    runs = methods(TINY, TRAIN, curves)["recipes"]
    assert list(runs) == list(RECIPES) and all(seeded for seeded, _ in runs.values())
    before = tiny_gpt()
    for seed in (0, 1):
        for name, (_, method) in runs.items():
            model = copy.deepcopy(before)
            method(model, seed)
            assert not torch.equal(model.lm_head.weight, before.lm_head.weight), name
    assert [len(curves[r]) for r in RECIPES] == [2] * 4
    assert curves["fp8 delayed"][0]["loss"] != curves["fp8 delayed"][1]["loss"]   # seeds 0, 1: other batches
    assert curves["bf16"][0].keys() == {"loss"} and "g_flushed" in curves["fp8 unscaled"][0]


def test_the_suite_refuses_a_gpu():
    with pytest.raises(ValueError, match=r"device='cuda'.*runs on the cpu"):
        run(torch.device("cuda"))
