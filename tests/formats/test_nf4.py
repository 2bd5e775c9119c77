"""lab.formats.nf4 against the QLoRA paper's table of levels, a float64 nearest-level reference, bitsandbytes'
packing order and the storage formula."""

from __future__ import annotations

import math

import pytest
import torch

from lab.formats.nf4 import (NF4_OFFSET, NF4Tensor, _absmax, dequantize_nf4, nf4_bits_per_parameter, nf4_values,
                             quantize_nf4)

# The 16 NF4 values as published: QLoRA (Dettmers et al. 2023, arXiv:2305.14314), Appendix E "NormalFloat 4-bit
# data type", the same numbers as bitsandbytes' hard-coded table (bitsandbytes/functional.py, get_4bit_type("nf4");
# csrc/kernels.cu, nf4_dequantization_lut), which its create_normal_map(offset=0.9677083) generates.
PUBLISHED = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
             -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
             0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0]


def _weights(N: int = 48, K: int = 256, seed: int = 0) -> torch.Tensor:
    """Gaussian weights with a few large outliers and one all-zero block."""
    gen = torch.Generator().manual_seed(seed)
    W = 0.02 * torch.randn(N, K, generator=gen)
    W.view(-1)[torch.randint(0, N * K, (20,), generator=gen)] *= 30
    W[0, :64] = 0.0
    return W


def test_levels_equal_the_published_table():
    levels = nf4_values()
    assert levels.shape == (16,) and levels.dtype == torch.float32
    torch.testing.assert_close(levels.double(), torch.tensor(PUBLISHED, dtype=torch.float64), rtol=0, atol=1e-6)
    assert (levels.double() - torch.tensor(PUBLISHED, dtype=torch.float64)).abs().max() == 0   # bit for bit, measured


def test_levels_are_normal_quantiles_with_an_exact_zero():
    levels = nf4_values().double()
    assert bool((levels[1:] > levels[:-1]).all()) and levels[0] == -1 and levels[7] == 0 and levels[15] == 1
    top = torch.special.ndtri(torch.tensor(NF4_OFFSET, dtype=torch.float64))           # Φ⁻¹(δ) ≈ 1.848
    positive = torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, 9, dtype=torch.float64)[:-1]) / top
    negative = -torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, 8, dtype=torch.float64)[:-1]) / top
    torch.testing.assert_close(levels[8:].flip(0), positive, rtol=0, atol=1e-6)
    torch.testing.assert_close(levels[:7], negative, rtol=0, atol=1e-6)


@pytest.mark.parametrize("block_size", [64, 32])
def test_round_trip_error_is_at_most_half_the_local_level_spacing(block_size):
    W = _weights()
    q = quantize_nf4(W, block_size, double_quant=False)
    W_hat = dequantize_nf4(q, torch.float64)
    levels = nf4_values().double()
    blocks = W.double().reshape(-1, block_size)
    a = blocks.abs().amax(1, keepdim=True)
    scaled = (blocks / a.clamp(min=1e-300)).reshape(-1)
    k = torch.searchsorted(levels, scaled).clamp(1, 15)                       # levels[k − 1] ≤ w / a ≤ levels[k]
    half_spacing = ((levels[k] - levels[k - 1]) / 2).view(-1, block_size)
    error = (W_hat.reshape(-1, block_size) - blocks).abs()
    assert bool((error <= half_spacing * a * (1 + 1e-6) + 1e-12).all())
    # the level chosen is a nearest one (up to the float32 rounding of w / a)
    nearest = (scaled[:, None] - levels[None, :]).abs().min(1).values.view(-1, block_size) * a
    assert bool((error <= nearest + 1e-6 * a).all())
    assert torch.equal(W_hat[0, :64], torch.zeros(64, dtype=torch.float64))    # an all-zero block stays 0
    torch.testing.assert_close(q.absmax, W.reshape(-1, block_size).abs().amax(1), rtol=0, atol=0)


def test_double_quantized_absmax_is_within_half_a_dynamic_map_step():
    W = _weights(N=512, K=256, seed=1)                           # 2048 blocks of 64: 8 blocks of 256 absmax
    exact, double = quantize_nf4(W, double_quant=False), quantize_nf4(W)
    assert torch.equal(double.packed, exact.packed)              # codes chosen with the exact absmax
    assert double.absmax.dtype == torch.uint8 and double.absmax_scales.shape == (8,)
    a, mean = exact.absmax.double(), exact.absmax.double().mean()
    torch.testing.assert_close(double.absmax_mean.double(), mean, rtol=1e-6, atol=0)
    a_hat = _absmax(double).double()
    # the signed dynamic map's steps are at most 0.9/64 in [0.1, 1]: half a step of each 256-block's max |a − μ|
    scale = (a - mean).abs().view(-1, 256).amax(1).repeat_interleave(256)
    assert bool(((a_hat - a).abs() <= 0.9 / 128 * scale * (1 + 1e-5)).all())
    assert (a_hat - a).abs().max() / a.max() < 0.01
    relative = (dequantize_nf4(double, torch.float32) - W).norm() / (dequantize_nf4(exact, torch.float32) - W).norm()
    assert relative < 1.01                                        # double quantization costs under 1% more error


def test_codes_are_packed_two_per_byte_first_in_the_high_nibble():
    W = torch.tensor([[1.0, -1.0, 0.0, PUBLISHED[13]] * 16])      # one block of 64: codes 15, 0, 7, 13, …
    q = quantize_nf4(W, double_quant=False)
    assert q.packed.shape == (1, 32) and q.packed.dtype == torch.uint8
    assert q.packed[0, :2].tolist() == [0xF0, 0x7D]
    assert dequantize_nf4(q, torch.float32)[0, :4].tolist() == [1.0, -1.0, 0.0, PUBLISHED[13]]
    assert quantize_nf4(torch.full((1, 64), 0.5)).packed[0, 0] == 0xFF    # w = a: level 1 (15)


@pytest.mark.parametrize("N, K", [(256, 1024), (100, 192)])
def test_measured_bytes_follow_the_bits_per_parameter_formula(N, K):
    W = torch.randn(N, K, generator=torch.Generator().manual_seed(2))
    n_blocks = N * K // 64
    plain, double = quantize_nf4(W, double_quant=False), quantize_nf4(W)
    assert plain.nbytes == N * K // 2 + 4 * n_blocks
    assert double.nbytes == N * K // 2 + n_blocks + 4 * math.ceil(n_blocks / 256) + 4
    assert 8 * plain.nbytes / (N * K) == nf4_bits_per_parameter(double_quant=False) == 4.5
    assert nf4_bits_per_parameter() == 4 + 8 / 64 + 32 / (64 * 256)
    extra = 8 * double.nbytes - N * K * nf4_bits_per_parameter()         # the mean, and the last block of 256
    assert extra == 32 if n_blocks % 256 == 0 else 32 <= extra <= 32 + 32
    assert nf4_bits_per_parameter(128, dq_block=128) == 4 + 8 / 128 + 32 / (128 * 128)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_in_and_out(dtype):
    W = _weights(N=8, K=128).to(dtype)
    q = quantize_nf4(W)
    W32 = dequantize_nf4(q, torch.float32)
    assert torch.equal(dequantize_nf4(q, dtype), W32.to(dtype)) and dequantize_nf4(q).dtype == torch.bfloat16
    assert torch.equal(q.packed, quantize_nf4(W.float()).packed)


def test_nf4_beats_a_uniform_16_level_grid_on_gaussian_weights():
    W = torch.randn(256, 256, generator=torch.Generator().manual_seed(3))
    nf4 = (dequantize_nf4(quantize_nf4(W, double_quant=False), torch.float32) - W).square().mean()
    blocks = W.reshape(-1, 64)
    a = blocks.abs().amax(1, keepdim=True)
    grid = torch.linspace(-1, 1, 16)                               # the same absmax blocks, evenly spaced levels
    uniform = grid[(blocks / a).unsqueeze(-1).sub(grid).abs().argmin(-1)] * a
    assert nf4 < 0.9 * (uniform - blocks).square().mean()


def test_nf4_tensor_is_rebuilt_from_its_fields():
    q = quantize_nf4(_weights(N=4, K=64))
    rebuilt = NF4Tensor(q.packed, q.absmax, q.block_size, q.absmax_scales, q.absmax_mean, q.dq_block)
    assert rebuilt.shape == (4, 64) and rebuilt.double_quant and torch.equal(dequantize_nf4(rebuilt), dequantize_nf4(q))
