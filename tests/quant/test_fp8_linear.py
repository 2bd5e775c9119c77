"""lab.quant.fp8_linear: the three GEMMs of a linear layer with rounded inputs, against the same products written
out with torch's float8 / bfloat16 casts; the model conversion and its undoing; a short training run."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lab.quant.fp8_linear import LowPrecisionLinear, low_precision_model, restore_linears
from lab.quant.fp8_training import train_with_recipe
from tests.quant.test_fp8_scaling import torch_scaled_cast
from tests.tiny_models import tiny_gpt

X_MAX = {"e4m3": 448.0, "e5m2": 57344.0}


def _layer_and_input(recipe: str):
    torch.manual_seed(0)
    linear = nn.Linear(24, 8)
    x = torch.randn(2, 5, 24, requires_grad=True)
    return LowPrecisionLinear(linear, recipe), linear, x


def test_fp8_current_gemms_equal_the_products_of_torch_casts():
    layer, linear, x = _layer_and_input("fp8 current")
    y = layer(x)
    grad_y = torch.randn_like(y) * 1e-4
    y.backward(grad_y)
    s_x, s_w, s_g = (X_MAX[f] / float(t.detach().abs().max()) for f, t in
                     (("e4m3", x), ("e4m3", linear.weight), ("e5m2", grad_y)))
    x8, w8, g8 = (torch_scaled_cast(t.detach(), f, s) for t, f, s in
                  ((x, "e4m3", s_x), (linear.weight, "e4m3", s_w), (grad_y, "e5m2", s_g)))
    torch.testing.assert_close(y, (x8 @ w8.T) * (1 / (s_x * s_w)) + linear.bias, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, (g8 @ w8) * (1 / (s_g * s_w)), rtol=0, atol=0)
    torch.testing.assert_close(linear.weight.grad, (g8.reshape(-1, 8).T @ x8.reshape(-1, 24)) * (1 / (s_g * s_x)),
                               rtol=0, atol=0)
    assert layer.weight is linear.weight                                  # the fp32 master weight is trained


def test_bf16_gemms_read_bf16_rounded_inputs():
    layer, linear, x = _layer_and_input("bf16")
    y = layer(x)
    y.sum().backward()
    bf = lambda t: t.detach().to(torch.bfloat16).float()                   # noqa: E731
    torch.testing.assert_close(y, bf(x) @ bf(linear.weight).T + linear.bias, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, torch.ones(2, 5, 8) @ bf(linear.weight), rtol=0, atol=0)


def test_fp8_outputs_stay_close_to_fp32():
    layer, linear, x = _layer_and_input("fp8 delayed")
    for _ in range(3):                                                    # the scale settles after one step
        y = layer(x)
    error = (y - linear(x)).norm() / linear(x).norm()
    assert 0 < error < 0.1


def test_a_converted_model_trains_its_master_weights_and_restores_plain_linears():
    model = tiny_gpt()
    ids = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(0))
    reference = model(ids)
    converted = low_precision_model(copy.deepcopy(model), "fp8 delayed")
    q_proj = converted.layers[0].attn.q_proj
    assert isinstance(q_proj, LowPrecisionLinear)
    master = q_proj.weight
    counters = restore_linears(converted)
    assert type(converted.layers[0].attn.q_proj) is nn.Linear and converted.layers[0].attn.q_proj.weight is master
    assert set(counters["layers.0.attn.q_proj"]) == {f"{t}_{w}" for t in "xwg" for w in ("flushed", "saturated")}
    torch.testing.assert_close(converted(ids), reference, rtol=0, atol=0)  # untrained: the same weights


@pytest.mark.parametrize("recipe", ["bf16", "fp8 delayed"])
def test_train_with_recipe_changes_the_weights_and_reports_its_losses(recipe):
    model = tiny_gpt()
    before = model.layers[1].mlp.down_proj.weight.detach().clone()
    settings = {"steps": 3, "batch": 2, "seq": 8, "lr": 1e-3, "warmup": 1, "history_len": 4}
    ids = torch.randint(0, 61, (400,), generator=torch.Generator().manual_seed(1))
    result = train_with_recipe(model, recipe, ids, settings, seed=0)
    assert len(result["loss"]) == 3 and all(torch.isfinite(torch.tensor(result["loss"])))
    assert not torch.equal(model.layers[1].mlp.down_proj.weight, before)
    assert type(model.layers[1].mlp.down_proj) is nn.Linear
    assert ("g_flushed" in result) == recipe.startswith("fp8")
