"""lab.quant.nf4_linear: NF4Linear's bf16 product and backward against the dequantized weight, its storage, and
nf4_model on a tiny GPT."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lab.formats.nf4 import dequantize_nf4, quantize_nf4
from lab.quant.linear import decoder_linear_names
from lab.quant.nf4_linear import NF4Linear, nf4_model


def _layer(bias: bool = True, double_quant: bool = True, seed: int = 0) -> tuple[NF4Linear, torch.Tensor]:
    """An NF4Linear (48, 128) and its dequantized weight Ŵ in bf16."""
    gen = torch.Generator().manual_seed(seed)
    q = quantize_nf4(0.05 * torch.randn(48, 128, generator=gen), double_quant=double_quant)
    b = torch.randn(48, generator=gen) if bias else None
    return NF4Linear(q, b), dequantize_nf4(q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_is_the_bf16_product_with_the_dequantized_weight(dtype, bias):
    layer, W_hat = _layer(bias)
    x = torch.randn(3, 5, 128, generator=torch.Generator().manual_seed(1)).to(dtype)
    y = layer(x)
    expected = (x.reshape(-1, 128).to(torch.bfloat16) @ W_hat.T).to(dtype).reshape(3, 5, 48)
    if bias:
        expected = expected + layer.bias.to(dtype)
    assert y.dtype == dtype and y.shape == (3, 5, 48) and torch.equal(y, expected)


def test_backward_gives_grad_x_through_the_dequantized_weight_and_keeps_no_float_copy():
    layer, W_hat = _layer()
    x = torch.randn(6, 128, requires_grad=True)
    g = torch.randn(6, 48)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    y.backward(g)
    reference = g.to(torch.bfloat16).double() @ W_hat.double()                # bf16 operands, exact sum
    torch.testing.assert_close(x.grad, reference.float(), rtol=2 ** -8, atol=1e-6)   # one bf16 rounding
    assert all(t.numel() < 48 * 128 for t in saved)                 # never a (48, 128) Ŵ kept for backward
    assert not any(p.requires_grad for p in layer.parameters()) and layer.bias.grad is None


@pytest.mark.parametrize("double_quant", [True, False])
def test_buffers_are_the_nf4_tensor(double_quant):
    layer, W_hat = _layer(double_quant=double_quant)
    q = layer.quantized()
    names = {"packed", "absmax", "absmax_scales", "absmax_mean"} if double_quant else {"packed", "absmax"}
    assert set(dict(layer.named_buffers())) == names and q.double_quant == double_quant
    assert sum(b.numel() * b.element_size() for b in layer.buffers()) == q.nbytes
    assert torch.equal(layer.dequantize(), W_hat) and layer.dequantize(torch.float32).dtype == torch.float32
    assert f"double_quant={double_quant}" in repr(layer)


def test_nf4_model_swaps_every_decoder_linear_and_stays_close_to_the_float_model(tiny_gpt):
    model = tiny_gpt()
    idx = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(idx)
        assert nf4_model(model, 16) is model
        after = model(idx)
    assert all(isinstance(model.get_submodule(name), NF4Linear) for name in decoder_linear_names(model))
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 1            # the head is left as it was
    assert after.dtype == torch.float32 and (after - before).norm() / before.norm() < 0.1


def test_nf4_model_refuses_before_swapping_any_linear(tiny_gpt):
    model = tiny_gpt()                                   # d_model 32, d_ff 48: blocks of 32 do not divide down_proj's
    with pytest.raises(ValueError, match=r"block_size=32 is not allowed; use an even divisor of K=48"):
        nf4_model(model, 32)
    assert all(type(model.get_submodule(name)) is nn.Linear for name in decoder_linear_names(model))
