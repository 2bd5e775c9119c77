"""lab.quant.affine against independent references.

References: `torch.fake_quantize_per_tensor_affine` / `torch.fake_quantize_per_channel_affine` (values and
straight-through gradients, bit for bit), hand-computed grids and per-group Python loops.
"""

from __future__ import annotations

import pytest
import torch

from lab.quant import (ChannelAbsMaxObserver, MinMaxObserver, MSEObserver, PercentileObserver, QuantizedTensor,
                       dequantize, fake_quantize, fake_quantize_with, qparams, quantize)
from lab.quant.affine import split_rows

BITS = range(2, 9)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _data(shape: tuple[int, ...], seed: int, shift: float = 0.0) -> torch.Tensor:
    """Gaussian values with a different scale per row (so channels differ), shifted to make the range asymmetric."""
    g = _gen(seed)
    scale = torch.exp(torch.randn(shape[0], *[1] * (len(shape) - 1), generator=g))
    return torch.randn(shape, generator=g) * scale + shift


def _grid(bits: int, symmetric: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)


def _ref_qparams(lo: float, hi: float, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The chapter's formulas for one range, in float32 scalars: range widened to contain 0;
    asymmetric s = (hi − lo)/(2ᵇ − 1), z = clamp(round(−lo/s)); symmetric s = max(|lo|, |hi|)/(2ᵇ⁻¹ − 1), z = 0."""
    qmin, qmax = _grid(bits, symmetric)
    lo = torch.tensor(min(float(lo), 0.0), dtype=torch.float32)
    hi = torch.tensor(max(float(hi), 0.0), dtype=torch.float32)
    if symmetric:
        s = torch.maximum(-lo, hi) / qmax
        s = s if s > 0 else torch.tensor(1.0)
        return s, torch.tensor(0, dtype=torch.int32)
    s = (hi - lo) / (qmax - qmin)
    s = s if s > 0 else torch.tensor(1.0)
    return s, torch.clamp(torch.round(-lo / s), qmin, qmax).to(torch.int32)


# ---------------------------------------------------------------------------------------------
# bit-for-bit equality with PyTorch's fake quantization
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("shift", [0.0, 0.7, -2.0])
def test_per_tensor_equals_torch_fake_quantize(bits, symmetric, shift):
    x = _data((37, 19), seed=bits * 10 + symmetric, shift=shift)
    qt = quantize(x, bits, symmetric)
    assert qt.scale.shape == () and qt.zero_point.shape == () and (qt.qmin, qt.qmax) == _grid(bits, symmetric)
    ref = torch.fake_quantize_per_tensor_affine(x, qt.scale, qt.zero_point, qt.qmin, qt.qmax)
    ref_scalar = torch.fake_quantize_per_tensor_affine(x, float(qt.scale), int(qt.zero_point), qt.qmin, qt.qmax)
    assert torch.equal(dequantize(qt), ref) and torch.equal(ref, ref_scalar)
    assert torch.equal(fake_quantize(x, bits, symmetric), ref)
    # the scale and zero point are the chapter's min-max formulas
    s, z = _ref_qparams(x.min(), x.max(), bits, symmetric)
    assert torch.equal(qt.scale, s) and torch.equal(qt.zero_point, z)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("shape, axis", [((23, 40), 0), ((23, 40), 1), ((5, 6, 7), 1), ((5, 6, 7), -1)])
def test_per_channel_equals_torch_fake_quantize(bits, symmetric, shape, axis):
    x = _data(shape, seed=bits + 100 * symmetric + len(shape), shift=0.3)
    qt = quantize(x, bits, symmetric, "channel", axis=axis)
    C = shape[axis]
    assert qt.scale.shape == (C,) and qt.zero_point.shape == (C,) and qt.zero_point.dtype == torch.int32
    ref = torch.fake_quantize_per_channel_affine(x, qt.scale, qt.zero_point, axis % x.dim(), qt.qmin, qt.qmax)
    assert torch.equal(dequantize(qt), ref)
    assert torch.equal(fake_quantize(x, bits, symmetric, "channel", axis=axis), ref)
    flat = x.movedim(axis, 0).reshape(C, -1)
    for c in range(C):
        s, z = _ref_qparams(flat[c].min(), flat[c].max(), bits, symmetric)
        assert qt.scale[c] == s and qt.zero_point[c] == z


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_quantize_their_float32_values(dtype):
    x = _data((8, 16), seed=3).to(dtype)
    qt = quantize(x, 4, granularity="channel")
    ref = torch.fake_quantize_per_channel_affine(x.float(), qt.scale, qt.zero_point, 0, 0, 15)
    assert qt.qdata.dtype == torch.int16 and qt.scale.dtype == torch.float32
    assert torch.equal(dequantize(qt), ref)
    y = fake_quantize(x, 4, granularity="channel")
    assert y.dtype == dtype and torch.equal(y, ref.to(dtype))


# ---------------------------------------------------------------------------------------------
# hand-checked grids and rounding error
# ---------------------------------------------------------------------------------------------

def test_qparams_by_hand():
    s, z = qparams(torch.tensor(-1.0), torch.tensor(3.0), 2, False)     # s = 4/3, z = round(0.75) = 1
    assert s.item() == pytest.approx(4 / 3) and z.item() == 1
    s, z = qparams(torch.tensor(2.0), torch.tensor(5.0), 4, False)      # widened to [0, 5]: s = 1/3, z = 0
    assert s.item() == pytest.approx(1 / 3) and z.item() == 0
    s, z = qparams(torch.tensor(-4.0), torch.tensor(-2.0), 4, False)    # widened to [-4, 0]: z = 15
    assert s.item() == pytest.approx(4 / 15) and z.item() == 15
    s, z = qparams(torch.tensor(-1.0), torch.tensor(3.0), 4, True)      # s = 3/7, z = 0
    assert s.item() == pytest.approx(3 / 7) and z.item() == 0
    s, z = qparams(torch.tensor(0.0), torch.tensor(0.0), 8, False)      # zero-width range
    assert s.item() == 1.0 and z.item() == 0


def test_quantize_by_hand():
    x = torch.tensor([-1.0, -0.5, 0.0, 1.0, 2.0, 3.0])
    qt = quantize(x, 2)                                          # s = 4/3, z = 1, grid {-4/3, 0, 4/3, 8/3}
    assert qt.qdata.tolist() == [0, 1, 1, 2, 3, 3]
    torch.testing.assert_close(dequantize(qt), torch.tensor([-4 / 3, 0.0, 0.0, 4 / 3, 8 / 3, 8 / 3]))
    qt = quantize(x, 3, symmetric=True)                          # s = 1, z = 0, codes -4..3
    assert qt.qdata.tolist() == [-1, 0, 0, 1, 2, 3]              # -0.5 rounds half to even
    assert torch.equal(quantize(torch.zeros(3, 4), 4).qdata, torch.zeros(3, 4, dtype=torch.int16))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_round_trip_error_at_most_half_a_step_inside_the_range(bits, symmetric, granularity):
    x = _data((12, 64), seed=bits, shift=0.4)
    x[3, 5] = 0.0
    qt = quantize(x, bits, symmetric, granularity, group_size=16, axis=0)
    s = qt.scale if granularity == "tensor" else (qt.scale[:, None] if granularity == "channel"
                                                   else qt.scale.repeat_interleave(16, dim=1))
    err = (dequantize(qt) - x).abs()
    assert (err <= s / 2 * (1 + 1e-5) + 1e-6 * x.abs()).all()
    assert dequantize(qt)[3, 5] == 0.0                             # zero is exactly representable
    assert qt.qdata.min() >= qt.qmin and qt.qdata.max() <= qt.qmax
    if symmetric:                                                  # -2^(b-1) only comes from clamping
        assert qt.qdata.min() >= qt.qmin + 1


def test_rounding_noise_has_mean_square_s2_over_12():
    x = torch.rand(200_000, generator=_gen(5)) * 7.3 - 2.1
    qt = quantize(x, 4)
    mse = (dequantize(qt) - x).square().mean().item()
    assert mse == pytest.approx(qt.scale.item() ** 2 / 12, rel=0.02)


def test_clipping_outside_the_range():
    scale, zero_point = torch.tensor(0.25), torch.tensor(3, dtype=torch.int32)    # grid 0..15: [-0.75, 3.0]
    x = torch.tensor([-5.0, -0.75, 0.1, 3.0, 3.2, 9.0])
    y = fake_quantize_with(x, scale, zero_point, 0, 15)
    assert y.tolist() == [-0.75, -0.75, 0.0, 3.0, 3.0, 3.0]
    assert torch.equal(y, torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 15))


# ---------------------------------------------------------------------------------------------
# group granularity
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("axis, group_size", [(0, 8), (0, 32), (1, 4), (1, 12)])
def test_group_granularity_matches_a_loop_over_groups(bits, symmetric, axis, group_size):
    x = _data((12, 32), seed=bits + axis, shift=-0.2)
    qt = quantize(x, bits, symmetric, "group", group_size=group_size, axis=axis)
    assert qt.group_size == group_size and qt.granularity == "group" and qt.axis == axis
    rows = x if axis == 0 else x.T                                 # (channels, grouped dimension)
    n_groups = rows.shape[1] // group_size
    assert qt.scale.shape == ((rows.shape[0], n_groups) if axis == 0 else (n_groups, rows.shape[0]))
    x_hat = dequantize(qt)
    rows_hat = x_hat if axis == 0 else x_hat.T
    codes = qt.qdata if axis == 0 else qt.qdata.T
    for c in range(rows.shape[0]):
        for g in range(n_groups):
            cols = slice(g * group_size, (g + 1) * group_size)
            piece = rows[c, cols]
            s, z = _ref_qparams(piece.min(), piece.max(), bits, symmetric)
            got_s, got_z = (qt.scale[c, g], qt.zero_point[c, g]) if axis == 0 else (qt.scale[g, c], qt.zero_point[g, c])
            assert got_s == s and got_z == z
            ref = torch.fake_quantize_per_tensor_affine(piece, s, z, qt.qmin, qt.qmax)
            assert torch.equal(rows_hat[c, cols], ref)
            assert torch.equal(codes[c, cols].float(), torch.round(ref / s) + z)
    assert torch.equal(fake_quantize(x, bits, symmetric, "group", group_size, axis), x_hat)


def test_group_of_the_whole_row_is_per_channel():
    x = _data((6, 24), seed=8)
    group = quantize(x, 3, granularity="group", group_size=24)
    channel = quantize(x, 3, granularity="channel")
    assert torch.equal(group.qdata, channel.qdata) and torch.equal(group.scale[:, 0], channel.scale)


def test_smaller_groups_give_smaller_error():
    x = _data((16, 256), seed=9) * torch.exp(torch.randn(256, generator=_gen(10)))   # columns of varying scale
    errors = [(dequantize(quantize(x, 4, granularity=gr, group_size=g)) - x).square().sum().item()
              for gr, g in [("tensor", 1), ("channel", 1), ("group", 128), ("group", 32)]]
    assert errors == sorted(errors, reverse=True)


# ---------------------------------------------------------------------------------------------
# straight-through estimator
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_straight_through_gradient_is_one_inside_the_range(granularity):
    x = _data((8, 32), seed=11).requires_grad_()
    y = fake_quantize(x, 3, granularity=granularity, group_size=8)
    upstream = torch.randn(8, 32, generator=_gen(12))
    y.backward(upstream)
    assert torch.equal(x.grad, upstream)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_straight_through_gradient_is_zero_where_clipped_like_torch(bits):
    x = (torch.randn(64, generator=_gen(bits)) * 3).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    scale, zero_point = torch.tensor(0.05), torch.tensor(2 ** (bits - 2), dtype=torch.int32)
    qmin, qmax = 0, 2 ** bits - 1
    upstream = torch.randn(64, generator=_gen(13))
    y = fake_quantize_with(x, scale, zero_point, qmin, qmax)
    ref = torch.fake_quantize_per_tensor_affine(x_ref, scale, zero_point, qmin, qmax)
    y.backward(upstream)
    ref.backward(upstream)
    assert torch.equal(y, ref) and torch.equal(x.grad, x_ref.grad)
    inside = (torch.round(x.detach() / scale) + zero_point >= qmin) & (torch.round(x.detach() / scale) + zero_point <= qmax)
    assert 0 < inside.sum() < 64                                   # both cases occur
    assert torch.equal(x.grad, torch.where(inside, upstream, torch.zeros(())))


def test_straight_through_gradient_per_channel_like_torch():
    x = (_data((6, 20), seed=14) * 2).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    scale = torch.rand(6, generator=_gen(15)) * 0.1 + 0.05
    zero_point = torch.randint(0, 16, (6,), generator=_gen(16), dtype=torch.int32)
    fake_quantize_with(x, scale[:, None], zero_point[:, None], 0, 15).sum().backward()
    torch.fake_quantize_per_channel_affine(x_ref, scale, zero_point, 0, 0, 15).sum().backward()
    assert torch.equal(x.grad, x_ref.grad) and 0 < x.grad.sum() < x.numel()


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------

X0 = torch.randn(4, 16)


def _with(value: float) -> torch.Tensor:
    x = X0.clone()
    x[1, 2] = value
    return x


@pytest.mark.parametrize("call, error, match", [
    (lambda: quantize(X0, 1), ValueError, r"bits=1 .*\[2, 8\]"),
    (lambda: quantize(X0, 9), ValueError, r"bits=9 .*\[2, 8\]"),
    (lambda: quantize(X0, 4.0), TypeError, r"bits must be an int, got 4\.0"),
    (lambda: quantize(X0, True), TypeError, r"bits must be an int, got True"),
    (lambda: fake_quantize(X0, 0), ValueError, r"bits=0"),
    (lambda: quantize(X0, 4, granularity="group", group_size=5), ValueError,
     r"group_size=5 is not allowed; use a divisor of x\.shape\[1\]=16"),
    (lambda: quantize(X0, 4, granularity="group", group_size=3, axis=1), ValueError,
     r"group_size=3 .*x\.shape\[0\]=4"),
    (lambda: quantize(X0, 4, granularity="group", group_size=0), ValueError, r"group_size=0"),
    (lambda: fake_quantize(X0, 4, granularity="group", group_size=6), ValueError, r"group_size=6"),
    (lambda: quantize(torch.randn(2, 4, 8), 4, granularity="group", group_size=4), ValueError,
     r"granularity='group' needs a 2-D tensor"),
    (lambda: quantize(_with(float("nan")), 4), ValueError, r"x contains NaN or infinite entries"),
    (lambda: quantize(_with(float("inf")), 4, granularity="channel"), ValueError, r"x contains NaN or infinite"),
    (lambda: fake_quantize(_with(-float("inf")), 4), ValueError, r"x contains NaN or infinite"),
    (lambda: quantize(torch.ones(4, 4, dtype=torch.int32), 4), TypeError,
     r"x must be a floating-point tensor, got torch\.int32"),
    (lambda: fake_quantize(torch.ones(4, dtype=torch.bool), 4), TypeError, r"x must be a floating-point"),
    (lambda: quantize([[1.0, 2.0]], 4), TypeError, r"x must be a torch\.Tensor, got list"),
    (lambda: quantize(torch.zeros(0, 3), 4), ValueError, r"x must not be empty"),
    (lambda: quantize(X0, 4, granularity="channel", axis=2), ValueError, r"axis=2 is out of range; allowed: \[-2, 1\]"),
    (lambda: quantize(X0, 4, granularity="channel", axis=-3), ValueError, r"axis=-3"),
    (lambda: fake_quantize(X0, 4, granularity="group", group_size=4, axis=5), ValueError, r"axis=5"),
    (lambda: quantize(X0, 4, granularity="row"), ValueError,
     r"granularity='row' is not allowed; use one of \('tensor', 'channel', 'group'\)"),
    (lambda: dequantize(X0), TypeError, r"qt must be a QuantizedTensor, got Tensor"),
    (lambda: split_rows(X0, [2, 2]), TypeError, r"qt must be a QuantizedTensor, got Tensor"),
    (lambda: split_rows(quantize(X0, 4), [2, 2]), ValueError, r"granularity 'channel' or 'group', axis 0"),
    (lambda: split_rows(quantize(X0, 4, granularity="channel", axis=1), [2, 2]), ValueError, r"axis=1"),
    (lambda: split_rows(quantize(X0, 4, granularity="channel"), [2, 1]), ValueError,
     r"sizes must be positive and add up to qt's 4 rows, got \[2, 1\]"),
    (lambda: qparams(torch.tensor(-1.0), torch.tensor(1.0), 10, False), ValueError, r"bits=10"),
    (lambda: MinMaxObserver().range(), ValueError, r"seen no data"),
    (lambda: PercentileObserver().range(), ValueError, r"seen no data"),
    (lambda: MSEObserver().range(), ValueError, r"seen no data"),
    (lambda: MinMaxObserver().update(_with(float("nan"))), ValueError, r"NaN or infinite"),
    (lambda: PercentileObserver().update(torch.ones(3, dtype=torch.int64)), TypeError, r"floating-point"),
    (lambda: ChannelAbsMaxObserver().update(_with(float("inf"))), ValueError, r"NaN or infinite"),
    (lambda: PercentileObserver(50.0), ValueError,
     r"percentile=50\.0 is out of range; allowed: a finite number in \(50, 100\]"),
    (lambda: PercentileObserver(100.5), ValueError, r"percentile=100\.5"),
    (lambda: PercentileObserver(max_samples=0), ValueError, r"max_samples=0 is out of range; allowed: \[1, inf\)"),
    (lambda: MSEObserver(n_grid=0), ValueError, r"n_grid=0 is out of range; allowed: \[1, inf\)"),
    (lambda: MSEObserver(n_grid=2.5), TypeError, r"n_grid must be an int, got 2\.5"),
    (lambda: MSEObserver(min_ratio=0.0), ValueError,
     r"min_ratio=0\.0 is out of range; allowed: a finite number in \(0\.0, 1\.0\]"),
    (lambda: MSEObserver(min_ratio=1.5), ValueError, r"min_ratio=1\.5"),
])
def test_bad_input_raises_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_quantized_tensor_fields():
    x = _data((6, 32), seed=50)
    qt = quantize(x, 4, granularity="group", group_size=8)
    assert isinstance(qt, QuantizedTensor) and qt.shape == x.shape and qt.bits == 4
    assert qt.qdata.dtype == torch.int16 and qt.scale.dtype == torch.float32 and qt.zero_point.dtype == torch.int32
    assert qt.scale.shape == qt.zero_point.shape == (6, 4)
    assert quantize(x, 4, granularity="channel").group_size is None


@pytest.mark.parametrize("granularity", ["channel", "group"])
def test_split_rows_cuts_codes_and_grids_by_rows(granularity):
    x = _data((7, 16), seed=51)
    qt = quantize(x, 4, granularity=granularity, group_size=4)
    parts = split_rows(qt, [3, 4])
    assert [p.shape for p in parts] == [(3, 16), (4, 16)]
    assert torch.equal(torch.cat([dequantize(p) for p in parts]), dequantize(qt))
    assert all(p.granularity == granularity and p.bits == 4 for p in parts)
