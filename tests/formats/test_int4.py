"""lab.formats.int4: the v1 and v2 int4 layouts against the codes themselves and their documented formulas.

References: the codes (exact pack/unpack round trips), hand-packed bytes and words, and a per-element
decoding of the documented layout.
"""

from __future__ import annotations

import pytest
import torch

from lab.formats.int4 import dequantize_int4, pack_int4, pack_int4_v2, unpack_int4, unpack_int4_v2


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- v1: (K/2, N) uint8, group-interleaved ---------------------------------------------------------------------

@pytest.mark.parametrize("N, K, group_size", [(1, 2, 2), (3, 8, 4), (5, 64, 32), (7, 96, 96), (4, 128, 16)])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_pack_unpack_round_trip_is_exact(N, K, group_size, dtype):
    q = torch.randint(0, 16, (N, K), generator=_gen(N * K + group_size)).to(dtype)
    packed = pack_int4(q, group_size)
    assert packed.dtype == torch.uint8 and packed.shape == (K // 2, N) and packed.is_contiguous()
    back = unpack_int4(packed, group_size)
    assert back.dtype == torch.uint8 and torch.equal(back.long(), q.long())


def test_pack_layout_by_hand():
    q = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    # g = 4: byte i of a group holds column i (low nibble) and column i + g/2 (high nibble); transposed (K/2, N)
    assert pack_int4(q, 4).tolist() == [[0x31, 0x75], [0x42, 0x86]]
    # g = 2: neighbours share a byte
    assert pack_int4(q, 2).tolist() == [[0x21, 0x65], [0x43, 0x87]]
    assert pack_int4(torch.tensor([[15, 0]]), 2).tolist() == [[0x0F]]


def test_pack_matches_the_documented_layout():
    N, K, g = 3, 64, 32
    q = torch.randint(0, 16, (N, K), generator=_gen(1))
    packed = pack_int4(q, g)
    for G in range(K // g):
        for i in range(g // 2):
            for n in range(N):
                byte = int(packed[G * g // 2 + i, n])
                assert byte & 0xF == q[n, G * g + i] and byte >> 4 == q[n, G * g + g // 2 + i]


@pytest.mark.parametrize("call, error, match", [
    (lambda: pack_int4(torch.rand(2, 8), 4), TypeError, r"q must be a 2-D integer tensor, got torch\.float32"),
    (lambda: pack_int4(torch.ones(2, 8, dtype=torch.bool), 4), TypeError, r"q must be a 2-D integer"),
    (lambda: pack_int4(torch.ones(8, dtype=torch.int64), 4), TypeError, r"q must be a 2-D integer"),
    (lambda: pack_int4([[1, 2]], 2), TypeError, r"got list"),
    (lambda: pack_int4(torch.full((2, 8), 16), 4), ValueError, r"4-bit codes in \[0, 15\], got values in \[16, 16\]"),
    (lambda: pack_int4(torch.full((2, 8), -1), 4), ValueError, r"4-bit codes in \[0, 15\]"),
    (lambda: pack_int4(torch.ones(2, 8, dtype=torch.int64), 3), ValueError,
     r"group_size=3 is not allowed; use an even divisor of in_features=8"),
    (lambda: pack_int4(torch.ones(2, 8, dtype=torch.int64), 6), ValueError, r"group_size=6"),
    (lambda: pack_int4(torch.ones(2, 8, dtype=torch.int64), 0), ValueError, r"group_size=0"),
    (lambda: unpack_int4(torch.ones(4, 2, dtype=torch.int8), 4), TypeError, r"packed must be a 2-D uint8 tensor"),
    (lambda: unpack_int4(torch.ones(4, dtype=torch.uint8), 4), TypeError, r"packed must be a 2-D uint8"),
    (lambda: unpack_int4(torch.ones(4, 2, dtype=torch.uint8), 16), ValueError, r"group_size=16 .*in_features=8"),
])
def test_packing_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_dequantize_int4_is_the_element_formula():
    """Ŵ[n, k] = s[k // g, n] · (q[n, k] − z[k // g, n]), in float32."""
    q = torch.randint(0, 16, (6, 64), generator=_gen(4))
    scales = torch.rand(2, 6, generator=_gen(5)) + 0.1
    zeros = torch.randint(0, 16, (2, 6), generator=_gen(6)).float()
    group = torch.arange(64) // 32
    expected = (q.float() - zeros[group].T) * scales[group].T
    assert torch.equal(dequantize_int4(pack_int4(q, 32), scales, zeros, 32), expected)


# --- v2: (N, K/4) int16, planar within a group -----------------------------------------------------------------

@pytest.mark.parametrize("N, K, group_size", [(1, 4, 4), (3, 64, 64), (5, 256, 128), (2, 192, 64), (4, 96, 32)])
def test_pack_v2_round_trip_is_exact(N, K, group_size):
    q = torch.randint(0, 16, (N, K), generator=_gen(N * K + group_size))
    packed = pack_int4_v2(q, group_size)
    assert packed.dtype == torch.int16 and packed.shape == (N, K // 4) and packed.is_contiguous()
    assert torch.equal(unpack_int4_v2(packed, group_size).long(), q)


def test_pack_v2_layout_by_hand():
    """word[n, G·g/4 + j] = Σ_p q[n, G·g + p·g/4 + j] << 4p: g = 8, two groups, one row."""
    q = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 15, 0, 15, 0, 15, 0, 15, 0]])
    words = pack_int4_v2(q, 8).to(torch.int32) & 0xFFFF
    assert words.tolist() == [[1 | 3 << 4 | 5 << 8 | 7 << 12, 2 | 4 << 4 | 6 << 8 | 8 << 12,
                               15 | 15 << 4 | 15 << 8 | 15 << 12, 0]]


def test_pack_v2_bad_input():
    with pytest.raises(ValueError, match=r"q must hold 4-bit codes in \[0, 15\], got values in \[0, 16\]"):
        pack_int4_v2(torch.tensor([[0, 16, 0, 0]]), 4)
    with pytest.raises(ValueError, match=r"group_size=6 is not allowed; the v2 layout needs a multiple of 4"):
        pack_int4_v2(torch.zeros(1, 12, dtype=torch.int64), 6)
    with pytest.raises(TypeError, match=r"packed must be a 2-D int16 tensor, got torch\.uint8"):
        unpack_int4_v2(torch.zeros(2, 2, dtype=torch.uint8), 4)
