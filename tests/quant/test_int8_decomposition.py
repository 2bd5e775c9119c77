"""LLM.int8()'s decomposition (`lab.quant.int8_decomposition`): the outlier columns found per batch, the two
sums against float64, and the model swap."""

from __future__ import annotations

import copy

import torch
from torch import nn

from lab.quant import Int8DecomposedLinear, W8A8Linear, int8_decomposed_model, outlier_columns
from lab.quant.linear import decoder_linear_names
from tests.tiny_models import tiny_gpt


def _layer_and_input(outlier_scale: float, seed: int = 0) -> tuple[nn.Linear, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    linear = nn.Linear(64, 32)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(32, 64, generator=gen) / 8)
    x = torch.randn(40, 64, generator=gen)
    x[:, [3, 17]] *= outlier_scale          # two channels large in every token, as in the paper
    return linear, x


def test_outlier_columns_are_the_columns_whose_maximum_reaches_the_threshold():
    x = torch.zeros(3, 5)
    x[1, 2], x[0, 4], x[2, 0] = -6.0, 5.99, 7.0
    assert outlier_columns(x).tolist() == [True, False, True, False, False]
    assert outlier_columns(x, 5.0).tolist() == [True, False, True, False, True]
    assert outlier_columns(x[None]).tolist() == outlier_columns(x).tolist()


def test_outlier_columns_take_the_float16_path_and_the_rest_int8():
    linear, x = _layer_and_input(50.0)
    exact = x.double() @ linear.weight.double().T + linear.bias.double()
    decomposed = Int8DecomposedLinear(linear)(x).double()
    per_token = W8A8Linear(linear, "token")(x).double()
    error = lambda y: ((y - exact).norm() / exact.norm()).item()
    assert outlier_columns(x).nonzero().flatten().tolist() == [3, 17]
    assert error(decomposed) < 0.01 < error(per_token)      # the outliers no longer widen every token's step
    assert error(decomposed) * 10 < error(per_token)


def test_without_outliers_it_is_per_token_w8a8():
    linear, x = _layer_and_input(1.0)
    x = x.clamp(-5.0, 5.0)
    assert not outlier_columns(x).any()
    assert torch.equal(Int8DecomposedLinear(linear)(x), W8A8Linear(linear, "token")(x))


def test_the_outlier_part_is_float16_times_float16():
    linear, x = _layer_and_input(50.0)
    layer = Int8DecomposedLinear(linear, threshold=1e-6)      # every column an outlier: no int8 part left
    expected = x.half().float() @ linear.weight.half().float().T + linear.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-5)


def test_model_swap_keeps_shapes_and_stays_close_on_a_tiny_gpt():
    model = tiny_gpt()
    idx = torch.randint(0, 61, (2, 12), generator=torch.Generator().manual_seed(1))
    swapped = int8_decomposed_model(copy.deepcopy(model), threshold=2.0)
    names = decoder_linear_names(model)
    assert all(isinstance(swapped.get_submodule(n), Int8DecomposedLinear) for n in names)
    with torch.no_grad():
        a, b = model(idx), swapped(idx)
    assert a.shape == b.shape
    assert ((a - b).norm() / a.norm()).item() < 0.05
