"""Suite ``mx-formats`` (`lab.quant.mx_runs`): four runs per model, each putting its format into every decoder linear
of a tiny GPT and returning the bits per weight with the scales counted; run names; the suite refuses a GPU."""

from __future__ import annotations

import copy

import pytest
import torch

from lab.quant.mx_runs import SETTINGS, methods, mx_run_name, run
from tests.tiny_models import tiny_gpt


def test_every_run_quantizes_a_tiny_gpt_and_returns_its_bits_per_weight():
    before = tiny_gpt(d_ff=64)                          # every in_features a multiple of 32
    ids = torch.randint(0, 61, (2, 8), generator=torch.Generator().manual_seed(0))
    runs = methods(SETTINGS)["formats"]
    assert list(runs) == ["mxfp4 weights", "mxfp4 W4A4", "nvfp4 weights", "nvfp4 W4A4"]
    assert not any(seeded for seeded, _ in runs.values())
    outputs = {}
    for name, (_, method) in runs.items():
        model = copy.deepcopy(before)
        bits = method(model, 0)
        assert bits == pytest.approx(4.25, abs=1e-12) if name.startswith("mxfp4") else 4.5 < bits < 4.53, name
        with torch.no_grad():
            outputs[name] = model(ids)
    assert not torch.equal(outputs["mxfp4 weights"], outputs["mxfp4 W4A4"])   # the inputs are quantized too


def test_run_names_and_their_refusals():
    assert mx_run_name("nvfp4", True) == "nvfp4 W4A4"
    with pytest.raises(ValueError, match=r"fmt='mxfp8_e4m3' is not allowed"):
        mx_run_name("mxfp8_e4m3", False)
    with pytest.raises(TypeError, match=r"activations must be a bool"):
        mx_run_name("mxfp4", 1)


def test_the_suite_refuses_a_gpu():
    with pytest.raises(ValueError, match=r"device='cuda'.*runs on the cpu"):
        run(torch.device("cuda"))
