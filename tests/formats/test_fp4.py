"""lab.formats.fp4: the E2M1 code table, the two-per-byte packing (low nibble = even column) and the scales a
kernel decodes, against hand-worked bytes, torch's float8 dtypes and `lab.quant.minifloat`'s rounding."""

from __future__ import annotations

import pytest
import torch

from lab.formats.fp4 import decode_fp4_scales, dequantize_fp4, e2m1_codes, e2m1_values, pack_fp4, unpack_fp4
from lab.quant.minifloat import cast

CODES = torch.randint(0, 16, (6, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_the_code_table_is_e2m1():
    values = e2m1_values()
    assert values.tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6, 0, -0.5, -1, -1.5, -2, -3, -4, -6]
    assert torch.signbit(values).tolist() == [False] * 8 + [True] * 8            # code 8 is −0
    assert torch.equal(cast(values, "e2m1"), values)                              # every code a value of E2M1
    assert torch.equal(e2m1_codes(values), torch.arange(16, dtype=torch.uint8))


def test_packing_puts_the_even_column_in_the_low_nibble():
    q = torch.tensor([[1, 2, 3, 4], [15, 0, 8, 7]], dtype=torch.uint8)
    packed = pack_fp4(q)
    assert packed.tolist() == [[0x21, 0x43], [0x0F, 0x78]] and packed.dtype == torch.uint8
    assert torch.equal(unpack_fp4(packed), q)
    packed = pack_fp4(CODES)
    assert packed.shape == (6, 32) and torch.equal(unpack_fp4(packed), CODES)
    assert torch.equal(packed & 0xF, CODES[:, 0::2]) and torch.equal(packed >> 4, CODES[:, 1::2])


def test_codes_of_values_off_the_grid_are_refused():
    assert e2m1_codes(torch.tensor([-0.0, 6.0, -6.0, 0.5])).tolist() == [8, 7, 15, 1]
    with pytest.raises(ValueError, match=r"values must hold E2M1 values .*got \[0\.75\]"):
        e2m1_codes(torch.tensor([1.0, 0.75]))


def test_e8m0_and_e4m3_scales_decode_as_torchs_float8_dtypes():
    every = torch.arange(256, dtype=torch.uint8)
    e8m0 = decode_fp4_scales(every, "e8m0")
    theirs = every.view(torch.float8_e8m0fnu).float()
    assert torch.equal(e8m0[:255], theirs[:255]) and e8m0[:3].tolist() == [2.0 ** -127, 2.0 ** -126, 2.0 ** -125]
    assert torch.isnan(e8m0[255]) and torch.isnan(theirs[255])
    e4m3 = decode_fp4_scales(every, "e4m3")
    finite = ~torch.isnan(e4m3)
    assert torch.equal(e4m3[finite], every.view(torch.float8_e4m3fn).float()[finite]) and finite.sum() == 254


def test_dequantize_multiplies_code_value_block_scale_and_global_scale():
    """Row 0: blocks of 2 with scales 2^2 and 2^−1 (E8M0 129, 126); row 1 the same codes with E4M3 scales."""
    q = torch.tensor([[7, 9, 3, 12], [7, 9, 3, 12]], dtype=torch.uint8)            # 6, −0.5, 1.5, −2
    w = dequantize_fp4(pack_fp4(q[:1]), torch.tensor([[129, 126]], dtype=torch.uint8))
    assert w.tolist() == [[24.0, -2.0, 0.75, -1.0]]
    e4m3 = torch.tensor([[1.5, 0.25]]).to(torch.float8_e4m3fn).view(torch.uint8)
    w = dequantize_fp4(pack_fp4(q[1:]), e4m3, 0.5, "e4m3")
    assert w.tolist() == [[4.5, -0.375, 0.1875, -0.25]]
    whole = dequantize_fp4(pack_fp4(CODES), torch.full((6, 2), 127, dtype=torch.uint8))   # B = 32, S = 1
    assert torch.equal(whole, e2m1_values()[CODES.long()])
