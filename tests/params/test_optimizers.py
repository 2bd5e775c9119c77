"""lab.params.adafactor and lab.params.adam8bit against transformers' Adafactor, fp32 torch.optim.AdamW,
and the real storage of ``optimizer.state`` (the block-wise quantizer itself: tests/formats/test_blockwise.py)."""

from __future__ import annotations

import pytest
import torch
from transformers.optimization import Adafactor as HFAdafactor

import lab.params.adam8bit
from lab.formats.blockwise import dequantize_blockwise, dynamic_map
from lab.params.adafactor import Adafactor, adafactor_state_bytes, max_param_diff_vs_transformers
from lab.params.adam8bit import Adam8bit, adam8bit_state_bytes, blockwise_error_vs_float64
from tests.formats.test_blockwise import state_like

SHAPES = [(12, 8), (8,), (2, 3, 5)]   # a matrix, a vector, a stack of matrices


def _params(dtype: torch.dtype, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in SHAPES]


def _run(opt_cls, params, kwargs: dict, steps: int, seed: int = 1) -> torch.optim.Optimizer:
    """``steps`` optimizer steps on fixed pseudo-random gradients (the same for every optimizer)."""
    opt, gen = opt_cls(params, **kwargs), torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()
    return opt


def _state_storage(opt: torch.optim.Optimizer) -> int:
    return sum(t.untyped_storage().nbytes() for st in opt.state.values() for t in st.values()
               if torch.is_tensor(t) and t.dim() > 0)


ADAFACTOR_CONFIGS = [
    {},                                                                          # transformers' defaults, lr=None
    {"beta1": 0.9, "weight_decay": 0.01},
    {"warmup_init": True, "clip_threshold": 0.5},
    {"relative_step": False, "lr": 1e-2},
    {"relative_step": False, "scale_parameter": False, "lr": 3e-2, "beta1": 0.8, "clip_threshold": 0.1},
    {"relative_step": False, "lr": 1e-2, "decay_rate": -0.5, "eps": (1e-20, 1e-2), "weight_decay": 0.1},
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kwargs", ADAFACTOR_CONFIGS)
def test_adafactor_equals_transformers(kwargs, dtype):
    ours, ref = _params(dtype), _params(dtype)
    opt = _run(Adafactor, ours, kwargs, steps=6)
    ref_opt = _run(HFAdafactor, ref, kwargs, steps=6)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
    for p, q in zip(ours, ref):
        st, rst = opt.state[p], ref_opt.state[q]
        pairs = [("R", "exp_avg_sq_row"), ("C", "exp_avg_sq_col")] if p.dim() >= 2 else [("v", "exp_avg_sq")]
        pairs += [("m", "exp_avg")] if "beta1" in kwargs else []
        for name, ref_name in pairs:
            torch.testing.assert_close(st[name], rst[ref_name], rtol=1e-6, atol=1e-12)
        assert st["step"] == rst["step"] == 6


def test_adafactor_updates_bf16_parameters_through_fp32():
    ours, ref = _params(torch.bfloat16), _params(torch.bfloat16)
    opt = _run(Adafactor, ours, {}, steps=3)
    _run(HFAdafactor, ref, {}, steps=3)
    for p, q in zip(ours, ref):
        assert p.dtype == torch.bfloat16 and torch.equal(p, q)
    assert all(t.dtype == torch.float32 for st in opt.state.values() for t in st.values() if torch.is_tensor(t))


def _lm_batches(V: int, n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randint(0, V, (2, 12), generator=gen), torch.randint(0, V, (2, 12), generator=gen))
            for _ in range(n)]


@pytest.mark.parametrize("kwargs", [{}, {"relative_step": False, "scale_parameter": False, "lr": 3e-3}])
def test_max_param_diff_vs_transformers_on_a_model(tiny_gpt, kwargs):
    model = tiny_gpt()
    before = [p.clone() for p in model.parameters()]
    assert 0 <= max_param_diff_vs_transformers(model, _lm_batches(model.config.vocab_size), **kwargs) <= 1e-6
    assert all(torch.equal(p, q) and p.grad is None for p, q in zip(model.parameters(), before))


def test_max_param_diff_vs_transformers_sees_a_different_step(tiny_gpt, monkeypatch):
    step_size = Adafactor.step_size
    monkeypatch.setattr(Adafactor, "step_size", staticmethod(lambda group, t, W: 2 * step_size(group, t, W)))
    model = tiny_gpt()
    assert max_param_diff_vs_transformers(model, _lm_batches(model.config.vocab_size)) > 1e-4
    with pytest.raises(ValueError, match=r"batches=\[\] is empty"):
        max_param_diff_vs_transformers(model, [])
    with pytest.raises(TypeError, match=r"batches must be a sequence .* got generator"):
        max_param_diff_vs_transformers(model, (b for b in _lm_batches(8)))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        max_param_diff_vs_transformers("model", _lm_batches(8))


@pytest.mark.parametrize("beta1", [None, 0.9])
def test_adafactor_state_bytes_equal_storage(beta1):
    shapes = SHAPES + [(704, 256), (256,), ()]
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    opt = _run(Adafactor, params, {"beta1": beta1}, steps=1)
    assert adafactor_state_bytes(shapes, beta1=beta1) == _state_storage(opt)
    assert adafactor_state_bytes([(704, 256)]) == 4 * (704 + 256)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("B", [64, 2048])
def test_blockwise_error_vs_float64_is_rounding_only(signed, B):
    error = blockwise_error_vs_float64(state_like(signed).view(50, 100), signed, B)
    assert error.keys() == {"quantize", "dequantize"}
    assert 0 <= error["dequantize"] <= 2 ** -23 and -2 ** -23 <= error["quantize"] <= 2 ** -22, error


def test_blockwise_error_vs_float64_sees_a_code_that_is_not_the_nearest(monkeypatch):
    quantize = lab.params.adam8bit.quantize_blockwise

    def one_code_up(x, code, B):
        q, absmax = quantize(x, code, B)
        return (q.long() + 1).clamp(max=255).to(torch.uint8), absmax

    monkeypatch.setattr(lab.params.adam8bit, "quantize_blockwise", one_code_up)
    assert blockwise_error_vs_float64(state_like(True), True, 64)["quantize"] > 1e-3


def _regression(opt_cls, kwargs: dict, steps: int = 300):
    """Linear regression y = X W* + noise with a (16, 40) weight and a bias; returns (losses, optimizer, params)."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(512, 40, generator=gen)
    y = X @ torch.randn(40, 16, generator=gen) + 0.1 * torch.randn(512, 16, generator=gen)
    model = torch.nn.Linear(40, 16)
    with torch.no_grad():
        model.weight.copy_(0.1 * torch.randn(16, 40, generator=gen))
        model.bias.zero_()
    opt, losses = opt_cls(model.parameters(), **kwargs), []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(X), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses), opt, list(model.parameters())


ADAMW = {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}


@pytest.mark.parametrize("B", [64, 2048])
def test_adam8bit_loss_tracks_fp32_adamw(B):
    losses8, _, _ = _regression(Adam8bit, {**ADAMW, "block_size": B, "min_8bit_size": 0})   # every tensor 8-bit
    losses32, _, _ = _regression(torch.optim.AdamW, ADAMW)
    assert losses32[-1] < 0.02 * losses32[0] and losses8[-1] < 0.02 * losses8[0]
    # loss curves within 10% of each other at every one of the 300 steps (measured: at most 6.4%)
    assert ((losses8 - losses32).abs() / losses32).max() < 0.1


@pytest.mark.parametrize("B", [64, 2048])
def test_adam8bit_state_tracks_fp32_adamw_on_the_same_gradients(B):
    params8, params32 = _params(torch.float32), _params(torch.float32)
    opt8 = _run(Adam8bit, params8, {**ADAMW, "block_size": B, "min_8bit_size": 0}, steps=100)
    opt32 = _run(torch.optim.AdamW, params32, ADAMW, steps=100)
    code_m, code_v = dynamic_map(True), dynamic_map(False)
    for p8, p32 in zip(params8, params32):
        st8, st32 = opt8.state[p8], opt32.state[p32]
        m = dequantize_blockwise(st8["m_codes"], st8["m_absmax"], code_m, B, p8.shape)
        v = dequantize_blockwise(st8["v_codes"], st8["v_absmax"], code_v, B, p8.shape)
        # relative errors in norm after 100 steps (measured: m ≤ 2.5%, v ≤ 1.7%, W ≤ 0.2%)
        assert (m - st32["exp_avg"]).norm() / st32["exp_avg"].norm() < 0.06
        assert (v - st32["exp_avg_sq"]).norm() / st32["exp_avg_sq"].norm() < 0.05
        assert (p8 - p32).norm() / p32.norm() < 0.01


@pytest.mark.parametrize("B", [64, 2048])
def test_adam8bit_state_bytes_equal_storage(B):
    shapes = [(704, 256), (256,), (3, 50), ()]
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    opt = _run(Adam8bit, params, {"block_size": B}, steps=1)
    assert adam8bit_state_bytes(shapes, block_size=B) == _state_storage(opt)
    assert adam8bit_state_bytes([(704, 256)], 2048) == 2 * 704 * 256 + 8 * 88


@pytest.mark.parametrize("make, match", [
    (lambda p: Adam8bit(p, block_size=3000), r"block_size=3000 .*power of two"),
    (lambda p: Adam8bit(p, block_size=0), r"block_size=0 .*\[1, inf\)"),
    (lambda p: Adam8bit(p, block_size=64.0), r"block_size must be an int, got 64.0"),
    (lambda p: Adam8bit(p, lr=-1e-3), r"lr=-0.001 .*\[0.0, inf\)"),
    (lambda p: Adam8bit(p, betas=(0.9, 1.0)), r"betas\[1\]=1.0 .*\[0.0, 1.0\)"),
    (lambda p: Adam8bit(p, betas=(-0.1, 0.99)), r"betas\[0\]=-0.1 .*\[0.0, 1.0\)"),
    (lambda p: Adam8bit(p, betas=0.9), r"betas must be a tuple"),
    (lambda p: Adam8bit(p, eps=0.0), r"eps=0.0 .*\(0.0, inf\)"),
    (lambda p: Adafactor(p, relative_step=False, lr=-1.0), r"lr=-1.0 .*\[0.0, inf\)"),
    (lambda p: Adafactor(p, lr=1e-3), r"lr=0.001 is not allowed with relative_step=True"),
    (lambda p: Adafactor(p, relative_step=False), r"lr=None is not allowed with relative_step=False"),
    (lambda p: Adafactor(p, beta1=1.0), r"beta1=1.0 .*\[0.0, 1.0\)"),
    (lambda p: Adafactor(p, eps=(0.0, 1e-3)), r"eps\[0\]=0.0 .*\(0.0, inf\)"),
    (lambda p: Adafactor(p, eps=(1e-30, -1.0)), r"eps\[1\]=-1.0 .*\(0.0, inf\)"),
    (lambda p: Adafactor(p, clip_threshold=0), r"clip_threshold=0 .*\(0.0, inf\)"),
    (lambda p: Adafactor(p, decay_rate=0.8), r"decay_rate=0.8 .*\[-1.0, 0.0\)"),
    (lambda p: Adafactor(p, relative_step="yes"), r"relative_step must be a bool"),
    (lambda p: adam8bit_state_bytes([(4, 4)], block_size=6), r"block_size=6 .*power of two"),
    (lambda p: adafactor_state_bytes([(4, -1)]), r"shapes\[0\]\[1\]=-1"),
    (lambda p: blockwise_error_vs_float64(torch.ones(8), "yes"), r"signed must be a bool"),
    (lambda p: blockwise_error_vs_float64(torch.ones(8), True, 6), r"block_size=6 .*power of two"),
])
def test_bad_arguments_are_named(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make([torch.nn.Parameter(torch.ones(4))])
