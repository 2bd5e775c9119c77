"""Suite ``quant-seeds`` (`lab.quant.seeds`): its runs are the notebook's, each changes a tiny GPT as it names, a
weight run returns its mean layer error, and the suite refuses a GPU."""

from __future__ import annotations

import copy

import pytest
import torch

from lab.quant.linear import W8A8Linear
from lab.quant.seeds import QUICK, SETTINGS, methods, run, weight_name, weight_runs
from tests.tiny_models import tiny_gpt

CALIBS = {0: torch.randint(0, 61, (4, 16), generator=torch.Generator().manual_seed(0))}
TRAIN = torch.randint(0, 61, (400,), generator=torch.Generator().manual_seed(1))
TINY = {**QUICK, "calib_len": 8}        # QAT windows of 8 tokens fit the tiny GPT's 16 positions


def test_the_weight_runs_are_the_notebooks_table():
    assert [weight_name(*r, 64) for r in weight_runs(SETTINGS["bits"])] == [
        "rtn w8 g64", "rtn w4 g64", "rtn w3 g64", "rtn w2 g64", "gptq w4 g64", "gptq w3 g64", "gptq w2 g64",
        "awq w3 g64", "rtn w4 channel", "rtn w3 channel", "gptq w4 channel", "gptq w3 channel"]
    runs = methods(SETTINGS, CALIBS, TRAIN)
    assert {n for n, (seeded, _) in runs["weights"].items() if not seeded} == {
        "rtn w8 g64", "rtn w4 g64", "rtn w3 g64", "rtn w2 g64", "rtn w4 channel", "rtn w3 channel"}
    assert list(runs["w8a8"]) == ["W8A8 per token", "W8A8 per tensor"]
    assert list(runs["qat"]) == ["QAT", "fine-tune then RTN"]


@pytest.mark.parametrize("experiment", ["weights", "w8a8", "qat"])
def test_every_run_changes_a_tiny_gpt(experiment):
    before = tiny_gpt()
    ids = CALIBS[0][:2]
    with torch.no_grad():
        reference = before(ids)
    for name, (_, method) in methods(TINY, CALIBS, TRAIN)[experiment].items():
        model = copy.deepcopy(before)
        value = method(model, 0)
        with torch.no_grad():
            out = model(ids)
        assert torch.isfinite(out).all() and not torch.equal(out, reference), name
        if experiment == "weights":
            assert isinstance(value, float) and 0 < value < 1, name      # the mean layer error
        if experiment == "w8a8":
            assert isinstance(model.layers[0].attn.q_proj, W8A8Linear), name


def test_the_suite_refuses_a_gpu():
    with pytest.raises(ValueError, match=r"device='cuda'.*runs on the cpu"):
        run(torch.device("cuda"))
