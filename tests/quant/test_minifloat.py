"""lab.quant.minifloat: FP8 rounding bit for bit against torch's float8 casts; FP6 and FP4 against every code of
the format enumerated from its bit fields (nearest code, ties to the even code)."""

from __future__ import annotations

import pytest
import torch

from lab.quant.minifloat import FORMATS, cast

TORCH = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def _same(ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    """Equal values, NaN where NaN, and the same sign bit (−0 is not +0)."""
    nan = torch.isnan(theirs)
    return (torch.equal(torch.isnan(ours), nan) and torch.equal(ours[~nan], theirs[~nan])
            and torch.equal(torch.signbit(ours[~nan]), torch.signbit(theirs[~nan])))


def _values(fmt: str) -> torch.Tensor:
    """All 256 codes of the format, decoded by torch: float32 (256,)."""
    return torch.arange(256, dtype=torch.uint8).view(TORCH[fmt]).float()


@pytest.mark.parametrize("fmt", list(TORCH))
def test_every_code_is_its_own_rounding(fmt):
    values = _values(fmt)
    assert _same(cast(values, fmt), values)


@pytest.mark.parametrize("fmt", list(TORCH))
def test_the_format_constants_are_torchs(fmt):
    finite = _values(fmt)[torch.isfinite(_values(fmt))]
    f = FORMATS[fmt]
    assert finite.max().item() == f.max_finite == torch.finfo(TORCH[fmt]).max
    assert finite[finite > 0].min().item() == 2.0 ** (f.min_normal_exponent - f.mantissa_bits)
    assert torch.finfo(TORCH[fmt]).tiny == 2.0 ** f.min_normal_exponent
    assert torch.isinf(_values(fmt)).any().item() == f.has_inf


@pytest.mark.parametrize("fmt", list(TORCH))
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


@pytest.mark.parametrize("fmt", list(TORCH))
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


SMALL = {"e3m2": (3, 2, 28.0, 2.0 ** -4), "e2m3": (2, 3, 7.5, 2.0 ** -3), "e2m1": (2, 1, 6.0, 0.5)}  # E, M, max, min


def _code_table(E: int, M: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every non-negative code of a format without inf/NaN, from its bit fields: (values, mantissa LSB), float64
    and bool (2^(E+M),), in code order (which is the order of the values)."""
    bias = 2 ** (E - 1) - 1
    values, odd = [], []
    for e in range(2 ** E):
        for m in range(2 ** M):
            values.append(2.0 ** (e - bias) * (1 + m / 2 ** M) if e else 2.0 ** (1 - bias) * m / 2 ** M)
            odd.append(m % 2 == 1)
    return torch.tensor(values, dtype=torch.float64), torch.tensor(odd)


def _nearest_code(x: torch.Tensor, E: int, M: int) -> torch.Tensor:
    """The reference: the code value nearest to |x| (ties to the code whose mantissa LSB is 0), with x's sign."""
    values, odd = _code_table(E, M)
    distance = (x.double().abs()[:, None] - values[None, :]).abs()
    best = distance == distance.min(dim=1, keepdim=True).values
    even_best = best & ~odd
    pick = torch.where(even_best.any(dim=1), even_best.float().argmax(dim=1), best.float().argmax(dim=1))
    return torch.copysign(values[pick], x.double()).float()


@pytest.mark.parametrize("fmt", list(SMALL))
def test_the_code_table_gives_the_format_constants(fmt):
    E, M, largest, smallest = SMALL[fmt]
    values, _ = _code_table(E, M)
    f = FORMATS[fmt]
    assert (f.exponent_bits, f.mantissa_bits, f.bits, f.has_inf) == (E, M, 1 + E + M, False)
    assert values.max().item() == f.max_finite == largest and values[1].item() == smallest
    assert 2.0 ** f.emax <= largest < 2.0 ** (f.emax + 1)
    assert torch.equal(cast(values, fmt).double(), values)                  # every code is its own rounding
    if fmt == "e2m1":
        assert values.tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6]


@pytest.mark.parametrize("fmt", list(SMALL))
def test_fp6_and_fp4_round_to_the_nearest_code_ties_to_even(fmt):
    """Every midpoint between neighbouring codes (a tie), one float32 step either side of it, values past the
    largest code (saturation), and 100,000 random values across the range and below the smallest step."""
    E, M, largest, _ = SMALL[fmt]
    values, _ = _code_table(E, M)
    mid = (values[1:] + values[:-1]) / 2
    top = torch.tensor([1.0, 1.01, 1.5, 3.0, 1e6], dtype=torch.float64) * largest
    x = torch.cat([mid, top]).float()
    x = torch.cat([x, torch.nextafter(x, torch.full_like(x, float("inf"))),
                   torch.nextafter(x, torch.full_like(x, -float("inf")))])
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(100_000, generator=g) * largest * torch.exp2(torch.randint(-12, 2, (100_000,), generator=g))
    x = torch.cat([x, -x, spread])
    assert torch.equal(cast(x, fmt), _nearest_code(x, E, M))


@pytest.mark.parametrize("fmt", list(SMALL))
def test_fp6_and_fp4_saturate_infinities_and_keep_the_sign_of_zero(fmt):
    x = torch.tensor([float("inf"), -float("inf"), 0.0, -0.0, -1e-30, float("nan")])
    out = cast(x, fmt)
    largest = FORMATS[fmt].max_finite
    assert out[:5].tolist() == [largest, -largest, 0.0, 0.0, 0.0] and torch.isnan(out[5])
    assert torch.signbit(out[:5]).tolist() == [False, True, False, True, True]


def test_bad_input_is_refused_by_name():
    with pytest.raises(ValueError, match=r"fmt='e3m4' is not allowed"):
        cast(torch.ones(2), "e3m4")
    with pytest.raises(TypeError, match=r"x must be a floating-point tensor"):
        cast(torch.ones(2, dtype=torch.int32), "e4m3")
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        cast([1.0], "e5m2")
