"""lab.params.precision against torch.finfo, NumPy's spacing and torch.amp.GradScaler."""

import copy

import numpy as np
import pytest
import torch

from lab.models.gpt import GPT, GPTConfig
from lab.params.precision import (DynamicLossScaler, float_format_info, plot_format_ranges, plot_rounding, round_to,
                                  spacing, underflow_fraction)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float8_e5m2, torch.float8_e4m3fn]


@pytest.mark.parametrize("dtype", DTYPES)
def test_format_info_from_bit_layout_matches_finfo(dtype):
    info, ref = float_format_info(dtype), torch.finfo(dtype)
    assert info["bits"] == ref.bits
    assert info["max"] == ref.max
    assert info["smallest_normal"] == ref.smallest_normal
    assert info["smallest_subnormal"] == ref.smallest_normal * ref.eps
    assert info["eps"] == ref.eps
    assert torch.tensor(info["smallest_subnormal"], dtype=torch.float64).to(dtype).double() > 0
    assert torch.tensor(info["smallest_subnormal"] / 2, dtype=torch.float64).to(dtype).double() == 0


def _next_up_bf16(x: torch.Tensor) -> torch.Tensor:
    """Next bf16 number above positive x by incrementing its bit pattern."""
    bits = x.to(torch.bfloat16).view(torch.int16) + 1
    return bits.view(torch.bfloat16).to(torch.float64)


def test_spacing_matches_numpy_and_bit_increments():
    x = torch.cat([torch.logspace(-44, 38, 500, dtype=torch.float64), torch.tensor([0.0, 1.0, 3.0, 1e-3])])
    for dtype, np_dtype in ((torch.float32, np.float32), (torch.float16, np.float16), (torch.float64, np.float64)):
        xr = round_to(x, dtype)
        finite = torch.isfinite(xr)
        ref = np.abs(np.spacing(xr[finite].numpy().astype(np_dtype))).astype(np.float64)
        assert np.array_equal(spacing(xr[finite], dtype).numpy(), ref), dtype
    xb = round_to(x[(x > 0) & (x < 1e38)], torch.bfloat16)
    xb = xb[xb > 0]
    assert torch.equal(spacing(xb, torch.bfloat16), _next_up_bf16(xb) - xb)


def test_round_to_error_is_at_most_half_an_ulp():
    x = torch.rand(2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 100
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        err = (round_to(x, dtype) - x).abs()
        assert bool((err <= spacing(x, dtype) / 2).all())
    assert round_to(torch.tensor([70000.0]), torch.float16).isinf().all()
    assert round_to(torch.tensor([70000.0]), torch.bfloat16).item() == 70144.0


def test_plots_draw():
    assert len(plot_format_ranges().patches) == 10
    assert len(plot_rounding().lines) == 3 * 2


def _grad_pattern(step):
    """Steps 2, 3 overflow (inf), step 7 gives nan, the rest are finite."""
    return {2: float("inf"), 3: float("inf"), 7: float("nan")}.get(step)


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_loss_scaler_matches_gradscaler_step_by_step(opt_name):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    ref_model = copy.deepcopy(model)
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), "adam": lambda p: torch.optim.Adam(p, lr=1e-2)}
    opt, ref_opt = make[opt_name](model.parameters()), make[opt_name](ref_model.parameters())
    ours = DynamicLossScaler(init_scale=2.0**10, growth_factor=2.0, backoff_factor=0.5, growth_interval=3)
    ref = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_factor=2.0, backoff_factor=0.5, growth_interval=3)
    gen = torch.Generator().manual_seed(1)
    scales, stepped = [], []
    for step in range(14):
        x, y = torch.randn(5, 4, generator=gen), torch.randn(5, 2, generator=gen)
        for m, o, scale_loss in ((model, opt, ours.scale_loss), (ref_model, ref_opt, ref.scale)):
            o.zero_grad()
            scale_loss(torch.nn.functional.mse_loss(m(x), y)).backward()
            if _grad_pattern(step) is not None:
                m[0].weight.grad[1, 2] = _grad_pattern(step)
        stepped.append(ours.step(opt))
        ref.step(ref_opt)
        ours.update()
        ref.update()
        assert ours.scale == ref.get_scale()
        for p, q in zip(model.parameters(), ref_model.parameters()):
            assert torch.equal(p, q), step
        scales.append(ours.scale)
    assert stepped == [_grad_pattern(s) is None for s in range(14)]
    # growth after 3 finite steps, halving at each overflow
    assert scales[:6] == [2.0**10, 2.0**10, 2.0**9, 2.0**8, 2.0**8, 2.0**8]


def test_unscale_then_step_and_found_inf():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=1.0)
    scaler = DynamicLossScaler(init_scale=4.0, growth_interval=1)
    scaler.scale_loss((p * torch.tensor([1.0, 2.0, 3.0])).sum()).backward()
    assert scaler.unscale_(opt) is False
    assert torch.equal(p.grad, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(RuntimeError, match="already called"):
        scaler.unscale_(opt)
    assert scaler.step(opt) is True
    scaler.update()
    assert scaler.scale == 8.0
    assert scaler.unscale_([torch.tensor([1.0, float("nan")])]) is True


def test_loss_scaler_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"init_scale=0 is out of range; allowed: .*\(0, inf\)"):
        DynamicLossScaler(init_scale=0)
    with pytest.raises(ValueError, match=r"growth_factor=1.0 is out of range; allowed: .*\(1, inf\)"):
        DynamicLossScaler(growth_factor=1.0)
    with pytest.raises(ValueError, match=r"backoff_factor=1.5 is out of range; allowed: .*\(0.0, 1.0\)"):
        DynamicLossScaler(backoff_factor=1.5)
    with pytest.raises(ValueError, match=r"growth_interval=0 is out of range; allowed: \[1, inf\)"):
        DynamicLossScaler(growth_interval=0)
    with pytest.raises(TypeError, match=r"growth_interval must be an int, got 1.5"):
        DynamicLossScaler(growth_interval=1.5)
    with pytest.raises(ValueError, match=r"dtype=torch.int8 is not allowed"):
        float_format_info(torch.int8)
    with pytest.raises(ValueError, match=r"scale=-1 is out of range; allowed: .*\(0, inf\)"):
        underflow_fraction([torch.ones(2)], scale=-1)
    with pytest.raises(RuntimeError, match="update\\(\\) needs"):
        DynamicLossScaler().update()


def test_fp16_gradient_underflow_of_a_real_model_and_scaling_fixes_it():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=256, context_length=16, d_model=64, n_layer=2, n_head=4, n_kv_head=2, d_ff=128)
    model = GPT(cfg)
    idx = torch.randint(0, 256, (2, 16))
    loss = torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten()) * 1e-4
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    # independent reference: NumPy's float16 cast
    flat = np.concatenate([g.double().flatten().numpy() for g in grads])
    flat = flat[flat != 0]
    for scale in (1.0, 2.0**12):
        ref = float(np.mean((flat * scale).astype(np.float16) == 0))
        assert underflow_fraction(grads, torch.float16, scale) == ref
    assert underflow_fraction(grads, torch.float16) > 0.05
    assert underflow_fraction(grads, torch.float16, 2.0**12) < underflow_fraction(grads, torch.float16) / 10
    assert underflow_fraction(grads, torch.bfloat16) == 0.0
