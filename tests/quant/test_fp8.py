"""lab.quant.fp8: FP8 rounding from the bit fields, bit for bit against torch's float8 casts."""

from __future__ import annotations

import pytest
import torch

from lab.quant.fp8 import FORMATS, cast

TORCH = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def _same(ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    """Equal values, NaN where NaN, and the same sign bit (−0 is not +0)."""
    nan = torch.isnan(theirs)
    return (torch.equal(torch.isnan(ours), nan) and torch.equal(ours[~nan], theirs[~nan])
            and torch.equal(torch.signbit(ours[~nan]), torch.signbit(theirs[~nan])))


def _values(fmt: str) -> torch.Tensor:
    """All 256 codes of the format, decoded by torch: float32 (256,)."""
    return torch.arange(256, dtype=torch.uint8).view(TORCH[fmt]).float()


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_code_is_its_own_rounding(fmt):
    values = _values(fmt)
    assert _same(cast(values, fmt), values)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_the_format_constants_are_torchs(fmt):
    finite = _values(fmt)[torch.isfinite(_values(fmt))]
    f = FORMATS[fmt]
    assert finite.max().item() == f.max_finite == torch.finfo(TORCH[fmt]).max
    assert finite[finite > 0].min().item() == 2.0 ** (f.min_normal_exponent - f.mantissa_bits)
    assert torch.finfo(TORCH[fmt]).tiny == 2.0 ** f.min_normal_exponent
    assert torch.isinf(_values(fmt)).any().item() == f.has_inf


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_ties_and_their_neighbours_round_as_torch_does(fmt):
    """The midpoint of every pair of neighbouring values (a tie: to the even code), one float32 step either
    side of it, and the midpoints past the largest value (saturation or infinity)."""
    values = _values(fmt)
    finite = torch.unique(values[torch.isfinite(values)])           # sorted, −max … max
    mid = (finite[1:].double() + finite[:-1].double()) / 2
    top = torch.tensor([1.0, 1.0625, 1.125, 1.5, 2.0, 1e4], dtype=torch.float64) * FORMATS[fmt].max_finite
    x = torch.cat([mid, top, -top]).float()
    x = torch.cat([x, torch.nextafter(x, torch.full_like(x, float("inf"))),
                   torch.nextafter(x, torch.full_like(x, -float("inf")))])
    assert _same(cast(x, fmt), x.to(TORCH[fmt]).float())


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_random_float32_bit_patterns_round_as_torch_does(fmt):
    """200,000 float32 values drawn as random bit patterns: every exponent, subnormals, ±inf and NaN."""
    bits = torch.randint(-2**31, 2**31, (200_000,), generator=torch.Generator().manual_seed(0), dtype=torch.int64)
    x = bits.to(torch.int32).view(torch.float32)
    scaled = torch.cat([x, x * 2.0 ** -120, x * 2.0 ** -100])      # most of the mass near FP8's range too
    assert _same(cast(scaled, fmt), scaled.to(TORCH[fmt]).float())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_input_dtypes_round_their_values(dtype):
    """float16 and bfloat16 values are float32 values; float64 ones rounded once, from the exact value (a
    float64 between two float32 values is not first rounded to one of them): here float32 values."""
    x = torch.linspace(-500, 500, 10_001).to(dtype)
    for fmt in FORMATS:
        assert _same(cast(x, fmt), cast(x.float(), fmt)) and cast(x, fmt).dtype == torch.float32


def test_bad_input_is_refused_by_name():
    with pytest.raises(ValueError, match=r"fmt='e3m4' is not allowed"):
        cast(torch.ones(2), "e3m4")
    with pytest.raises(TypeError, match=r"x must be a floating-point tensor"):
        cast(torch.ones(2, dtype=torch.int32), "e4m3")
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        cast([1.0], "e5m2")
