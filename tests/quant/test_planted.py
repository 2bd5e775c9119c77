"""Suite ``planted`` (`lab.quant.planted`): every method it runs changes a tiny GPT and its planted twin as
it should, and the suite refuses a GPU (its record is checked by notebooks that run on the CPU)."""

from __future__ import annotations

import copy

import pytest
import torch

from lab.quant import plant_outliers
from lab.quant.int8_decomposition import Int8DecomposedLinear
from lab.quant.linear import W8A8Linear
from lab.quant.planted import QUICK, methods, run
from tests.tiny_models import tiny_gpt

SETTINGS = {**QUICK, "group_size": 16}       # the tiny GPT's widths (32, 48) are multiples of 16, not of 64
CALIBS = {0: torch.randint(0, 61, (4, 16), generator=torch.Generator().manual_seed(0))}
IDS = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(1))


def test_the_suite_runs_every_chapter_comparison_once_per_method():
    runs = methods(SETTINGS, CALIBS)
    assert list(runs) == ["activations", "weights", "pruning"]
    assert {name for name, (needs, _) in runs["activations"].items() if not needs} == {
        "W8A8 per token", "LLM.int8()"}
    assert list(runs["weights"]) == ["RTN w4", "RTN w3", "AWQ w4", "AWQ w3", "GPTQ w4", "GPTQ w3"]
    assert list(runs["pruning"]) == ["magnitude", "row magnitude", "Wanda", "SparseGPT"]


@pytest.mark.parametrize("experiment", ["activations", "weights", "pruning"])
def test_every_method_changes_the_planted_twin_and_keeps_its_output_close(experiment):
    planted = tiny_gpt()
    plant_outliers(planted, 50.0, 2, seed=0)
    with torch.no_grad():
        reference = planted(IDS)
    for name, (_, method) in methods(SETTINGS, CALIBS)[experiment].items():
        model = copy.deepcopy(planted)
        method(model, 0)
        with torch.no_grad():
            out = model(IDS)
        assert torch.isfinite(out).all(), name
        assert not torch.equal(out, reference), name           # the method did something
        if name.startswith(("W8A8", "SmoothQuant")):
            assert isinstance(model.layers[0].attn.q_proj, W8A8Linear), name
        if name == "LLM.int8()":
            assert isinstance(model.layers[0].attn.q_proj, Int8DecomposedLinear)


def test_the_suite_refuses_a_gpu():
    with pytest.raises(ValueError, match=r"device='cuda'.*runs on the cpu"):
        run(torch.device("cuda"))
