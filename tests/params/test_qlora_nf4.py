"""lab.params.lora's published QLoRA: LoRA over NF4Linear bases on every decoder linear (qlora_model)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from lab.formats.nf4 import quantize_nf4
from lab.models.next_token import lm_loss
from lab.params.lora import LoRALinear, add_lora, merge_logit_error, merge_lora, qlora_model, trainable_parameters
from lab.quant.linear import decoder_linear_names
from lab.quant.nf4_linear import NF4Linear, nf4_model

R, ALPHA, BLOCK = 4, 8.0, 16          # the tiny GPT's widths (32, 48) take blocks of 16


def _tokens(vocab: int, shape: tuple[int, int] = (2, 13)) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(0))


def test_all_linear_targets_every_decoder_linear(tiny_gpt):
    model = tiny_gpt()
    assert add_lora(model, R, ALPHA, "all-linear") == decoder_linear_names(tiny_gpt())
    assert len(decoder_linear_names(tiny_gpt())) == 14 and type(model.lm_head) is torch.nn.Linear


def test_qlora_with_B_zero_equals_the_nf4_base(tiny_gpt):
    base, qlora = nf4_model(tiny_gpt(), BLOCK), tiny_gpt()
    names = qlora_model(qlora, R, ALPHA, BLOCK)
    assert names == decoder_linear_names(base)
    assert all(isinstance(qlora.get_submodule(n), LoRALinear) and isinstance(qlora.get_submodule(n).base, NF4Linear)
               for n in names)
    idx = _tokens(qlora.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(qlora(idx), base(idx))


def test_lora_over_an_nf4_base_follows_the_formula_forward_and_backward():
    gen = torch.Generator().manual_seed(0)
    base = NF4Linear(quantize_nf4(0.05 * torch.randn(24, 64, generator=gen), block_size=32))
    lora = LoRALinear(base, R, ALPHA)
    with torch.no_grad():
        lora.B.copy_(0.1 * torch.randn(lora.B.shape, generator=gen))
    x = torch.randn(3, 64, generator=gen, requires_grad=True)
    y = lora(x)
    x_ref = x.detach().clone().requires_grad_()
    A, B = lora.A.detach().clone().requires_grad_(), lora.B.detach().clone().requires_grad_()
    y_ref = base(x_ref) + lora.scaling * F.linear(F.linear(x_ref, A), B)
    assert torch.equal(y, y_ref)
    g = torch.randn(3, 24, generator=gen)
    y.backward(g)
    y_ref.backward(g)
    for got, want in ((x.grad, x_ref.grad), (lora.A.grad, A.grad), (lora.B.grad, B.grad)):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert x.grad.dtype == torch.float32 and lora.A.dtype == lora.B.dtype == torch.float32


def test_gradients_reach_only_A_and_B_and_a_few_steps_reduce_the_loss(tiny_gpt):
    model = tiny_gpt()
    names = qlora_model(model, R, ALPHA, BLOCK)
    trainable = {f"{n}.{ab}" for n in names for ab in "AB"}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    assert trainable_parameters(model) == 2 * R * 464         # 2 layers × r·Σ (d_in + d_out) over the 7 linears
    batch = _tokens(model.config.vocab_size, (4, 17))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    losses = []
    for step in range(20):
        loss = lm_loss(model(batch[:, :-1]), batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            assert {n for n, p in model.named_parameters() if p.grad is not None} == trainable
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.2, losses
    # merged: float32 weights Ŵ + (α/r)·B A against bf16 products, so bf16 rounding apart
    assert 0 < merge_logit_error(model, batch[:, :-1]) < 0.05
    merged = copy.deepcopy(model)
    assert merge_lora(merged) == names and not any(isinstance(m, NF4Linear) for m in merged.modules())
