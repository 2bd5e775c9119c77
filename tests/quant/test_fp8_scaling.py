"""lab.quant.fp8_scaling against torch's float8 casts and an independent transcription of Transformer Engine's
delayed-scaling rule (a history of H amaxes, the scale of step t from steps t − H … t − 1, s₀ = 1)."""

from __future__ import annotations

import pytest
import torch

from lab.quant.fp8_scaling import FP8Scaler, fp8_scale

TORCH_FP8 = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
X_MAX = {"e4m3": 448.0, "e5m2": 57344.0}


def torch_scaled_cast(x: torch.Tensor, fmt: str, s: float) -> torch.Tensor:
    """cast(clamp(s·x, ±x_max)) with torch's float8 cast, read back as float32."""
    return (x.float() * s).clamp(-X_MAX[fmt], X_MAX[fmt]).to(TORCH_FP8[fmt]).float()


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_current_scaling_puts_amax_on_the_top_value_and_equals_torch(fmt):
    x = torch.randn(64, 48, generator=torch.Generator().manual_seed(0)) * 1e-3
    scaler = FP8Scaler(fmt, "current")
    x_fp8, s = scaler.quantize(x)
    assert s == pytest.approx(X_MAX[fmt] / float(x.abs().max()), rel=1e-12)
    assert float(x_fp8.abs().max()) == X_MAX[fmt]
    assert torch.equal(x_fp8, torch_scaled_cast(x, fmt, s))
    normal = (x * s).abs() >= 2.0 ** (-6 if fmt == "e4m3" else -14)  # the normal range: at most half a step
    rel = ((x_fp8 / s - x).abs() / x.abs())[normal].max()
    assert rel <= 2.0 ** -(4 if fmt == "e4m3" else 3) * (1 + 1e-6)
    assert scaler.saturated == 0 and scaler.elements == x.numel()


def test_unscaled_e5m2_flushes_small_gradients_that_a_scale_keeps():
    g = torch.full((1000,), 2.0 ** -20)                                # below E5M2's smallest subnormal 2^−16
    none, current = FP8Scaler("e5m2", "none"), FP8Scaler("e5m2", "current")
    assert float(none.quantize(g)[0].abs().max()) == 0 and none.flushed == 1000
    g_fp8, s = current.quantize(g)
    assert current.flushed == 0 and torch.equal(g_fp8 / s, g)


def delayed_reference(amaxes: list[float], fmt: str, history_len: int) -> list[float]:
    """The scale each step is cast with under delayed scaling, written from Transformer Engine's description."""
    scale, history, scales = 1.0, [0.0] * history_len, []
    for amax in amaxes:
        scales.append(scale)
        history = history[1:] + [amax]
        if max(history) > 0:
            scale = X_MAX[fmt] / max(history)
    return scales


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_delayed_scaling_follows_the_amax_history(fmt):
    gen = torch.Generator().manual_seed(1)
    tensors = [torch.randn(32, generator=gen) * 10.0 ** k for k in (0, 2, -1, -1, -1, -1, 1)]
    scaler = FP8Scaler(fmt, "delayed", history_len=3)
    got = [scaler.quantize(t)[1] for t in tensors]
    want = delayed_reference([float(t.abs().max()) for t in tensors], fmt, 3)
    assert got == pytest.approx(want, rel=1e-12)
    assert got[0] == 1.0                                              # the first step: s = 1, an empty history


def test_delayed_scaling_saturates_a_growing_tensor_where_current_scaling_does_not():
    steps = [torch.linspace(-1, 1, 101) * 4.0 ** k for k in range(5)]   # amax ×4 per step
    delayed, current = FP8Scaler("e4m3", "delayed", 4), FP8Scaler("e4m3", "current")
    for x in steps:
        delayed.quantize(x), current.quantize(x)
    assert current.saturated == 0
    assert delayed.saturated > 0                                     # steps 2 … 5 reach 4× the last amax


def test_a_zero_tensor_keeps_the_scale_and_a_margin_halves_it():
    scaler = FP8Scaler("e4m3", "current", margin=1)
    _, s = scaler.quantize(torch.tensor([2.0, -1.0]))
    assert s == fp8_scale(2.0, "e4m3", 1) == 448.0 / 4
    x_fp8, s0 = scaler.quantize(torch.zeros(3))
    assert s0 == s and torch.equal(x_fp8, torch.zeros(3))
