"""lab.formats.blockwise against a float64 nearest-code quantizer and bitsandbytes' dynamic map construction."""

from __future__ import annotations

import math

import pytest
import torch

from lab.formats.blockwise import _nearest, dequantize_blockwise, dynamic_map, nearest_code_table, quantize_blockwise


def _reference_quantize(x: torch.Tensor, code: torch.Tensor, B: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64, one block at a time: absmax, then the index of the nearest code (argmin = lower on ties)."""
    flat, code64 = x.reshape(-1).double(), code.double()
    q, absmax = [], []
    for block in flat.split(B):
        a = block.abs().max()
        absmax.append(a)
        scaled = block / a if a > 0 else block
        q.append((scaled[:, None] - code64[None, :]).abs().argmin(dim=1))
    return torch.cat(q), torch.stack(absmax)


def _reference_map(signed: bool) -> torch.Tensor:
    """bitsandbytes' construction in float64: midpoints of linspace(0.1, 1, k + 1) per decade, 0 and 1."""
    ref = [0.0, 1.0]
    for i in range(7):
        k = 2 ** i if signed else 2 ** (i + 1)
        edges = torch.linspace(0.1, 1.0, k + 1, dtype=torch.float64)
        means = (10.0 ** (i - 6) * (edges[:-1] + edges[1:]) / 2).tolist()
        ref += means + ([-x for x in means] if signed else [])
    return torch.tensor(sorted(ref), dtype=torch.float64)


def test_dynamic_map_follows_its_definition():
    for signed in (True, False):
        code, ref = dynamic_map(signed), _reference_map(signed)
        assert code.shape == (256,) and code.dtype == torch.float32
        torch.testing.assert_close(code.double(), ref, rtol=1e-7, atol=0)
        torch.testing.assert_close(dynamic_map(signed, torch.float64), ref, rtol=1e-15, atol=0)
        assert torch.equal(dynamic_map(signed, torch.float64).float(), code)
        assert bool((code[1:] > code[:-1]).all()) and code[-1] == 1.0 and (code == 0).sum() == 1
    assert (dynamic_map(True) < 0).sum() == 127 and dynamic_map(False).min() == 0


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("B", [64, 2048])
def test_quantize_blockwise_matches_float64_nearest_code(signed, B):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5000, generator=gen) * torch.logspace(-6, 1, 5000)[torch.randperm(5000, generator=gen)]
    x = x if signed else x.square()
    x[:B] = 0.0                                                 # an all-zero block
    code = dynamic_map(signed)
    q, absmax = quantize_blockwise(x.view(50, 100), code, B)
    ref_q, ref_absmax = _reference_quantize(x, code, B)
    assert q.dtype == torch.uint8 and q.shape == (5000,) and absmax.shape == (math.ceil(5000 / B),)
    torch.testing.assert_close(absmax.double(), ref_absmax, rtol=0, atol=0)
    # the chosen code is a nearest one in float64 (ties within float32 rounding of x / absmax aside)
    scaled = x.double() / ref_absmax.clamp(min=1e-300).repeat_interleave(B)[:5000]
    dist = (scaled - code.double()[q.long()]).abs()
    ref_dist = (scaled - code.double()[ref_q]).abs()
    assert bool((dist <= ref_dist + 1e-7 * scaled.abs()).all())
    assert (q.long() == ref_q).float().mean() > 0.999
    x_hat = dequantize_blockwise(q, absmax, code, B, (50, 100))
    assert x_hat.shape == (50, 100) and x_hat.dtype == torch.float32
    assert torch.equal(x_hat.reshape(-1)[:B], torch.zeros(B))
    # a block's largest |x| comes back as absmax (+1.0 is a code) or, if negative, as 0.993·absmax
    for block, a in zip(x_hat.reshape(-1).split(B), absmax):
        assert 0.99 * a <= block.abs().max() <= a


@pytest.mark.parametrize("signed", [True, False, None])
def test_nearest_code_lookup_equals_bucketize_on_the_midpoints(signed):
    if signed is None:     # a map with several midpoints in one cell of 2^-7: the table grows a column
        code = torch.cat([torch.linspace(-1, 1, 253), torch.tensor([0.5001, 0.50015, 0.5002])]).sort().values
    else:
        code = dynamic_map(signed)
    table = nearest_code_table(code)
    assert table[1].shape[1] == (1 if signed is not None else 3)
    mid = (code[1:] + code[:-1]) / 2
    inf = torch.tensor(math.inf)
    cells = (torch.arange(65536, dtype=torch.int32) << 16).view(torch.float32)
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([mid, torch.nextafter(mid, inf), torch.nextafter(mid, -inf), code, cells, -cells,
                   torch.nextafter(cells, inf), torch.nextafter(cells, -inf), torch.tensor([0.0, -0.0]),
                   torch.rand(100_000, generator=gen) * 2 - 1, torch.rand(100_000, generator=gen) ** 9])
    x = x[x.abs() <= 1]                                    # the range of x / absmax
    q = _nearest(x, table)
    assert q.dtype == torch.int32 and torch.equal(q.long(), torch.bucketize(x, mid))


def state_like(signed: bool, n: int = 5000) -> torch.Tensor:
    """Values over 7 decades in random order (squared for the unsigned map), a block of zeros first."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=gen) * torch.logspace(-6, 1, n)[torch.randperm(n, generator=gen)]
    x = x if signed else x.square()
    x[:64] = 0.0
    return x


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("B", [64, 2048])
def test_dequantize_equals_absmax_times_the_float64_code(signed, B):
    x = state_like(signed)
    q, absmax = quantize_blockwise(x, dynamic_map(signed), B)
    x_hat = dequantize_blockwise(q, absmax, dynamic_map(signed), B, x.shape).double()
    a = x.double().abs().reshape(-1).split(B)
    a = torch.cat([torch.full((len(block),), block.max().item(), dtype=torch.float64) for block in a])
    expected = a * _reference_map(signed)[q.long()]                  # x̂ = code value · absmax, in float64
    assert bool(((x_hat - expected).abs() <= 2 ** -23 * a).all())    # two float32 roundings at most
    assert torch.equal(x_hat[:64], torch.zeros(64, dtype=torch.float64))
