"""lab.formats.sparse24: N:M storage (values and position metadata) against independent references.

References: the input weight itself (exact round trip), a hand-packed 2:4 example and a per-group Python
decoding of the documented metadata layout, and closed-form byte counts.
"""

from __future__ import annotations

import pytest
import torch

from lab.formats.sparse24 import compress, compressed_nbytes, decompress, index_bits, meta_shape


def random_nm(out_features: int, in_features: int, n: int, m: int, seed: int,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A random weight with exactly n random positions kept per group (some groups forced to fewer)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features // m, m, generator=gen)
    keep = torch.rand(w.shape, generator=gen).argsort(-1)[..., :n]
    mask = torch.zeros_like(w, dtype=torch.bool).scatter_(-1, keep, True)
    w = w * mask
    w[0, 0] = 0.0  # an all-zero group
    return w.reshape(out_features, in_features).to(dtype)


# --- compress / decompress -------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (2, 8), (4, 8), (3, 5), (1, 2), (1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int8])
def test_round_trip_is_exact(n, m, dtype):
    w = random_nm(7, 6 * m, n, m, seed=n * 100 + m, dtype=dtype)
    values, meta = compress(w, n, m)
    assert values.dtype == dtype and values.shape == (7, 6 * n)
    assert meta.dtype == torch.uint8 and tuple(meta.shape) == meta_shape(7, 6 * m, n, m)
    back = decompress(values, meta, 6 * m, n, m)
    assert back.dtype == dtype and torch.equal(back, w)


def test_2_4_layout_by_hand():
    a, b, c, d = 1.5, -2.0, 3.25, 4.0
    w = torch.tensor([[0.0, a, b, 0.0, c, 0.0, d, 0.0]])
    values, meta = compress(w)
    assert values.tolist() == [[a, b, c, d]]
    # group 0 positions (1, 2) -> low nibble 1 | 2<<2 = 0x9; group 1 positions (0, 2) -> high nibble 0x8
    assert meta.tolist() == [[0x89]]


def test_2_4_metadata_matches_the_documented_layout():
    w = random_nm(5, 40, 2, 4, seed=3)  # in/4 = 10 groups -> 5 bytes per row
    values, meta = compress(w)
    for r in range(5):
        for g in range(10):
            nibble = (int(meta[r, g // 2]) >> (4 * (g % 2))) & 0xF
            p0, p1 = nibble & 3, nibble >> 2
            assert p0 < p1
            group = w[r, 4 * g: 4 * g + 4]
            assert values[r, 2 * g] == group[p0] and values[r, 2 * g + 1] == group[p1]
            others = [p for p in range(4) if p not in (p0, p1)]
            assert (group[others] == 0).all()


def test_odd_number_of_groups_pads_the_last_byte():
    w = random_nm(3, 12, 2, 4, seed=4)  # 3 groups = 12 bits -> 2 bytes, high nibble of byte 1 unused
    values, meta = compress(w)
    assert meta.shape == (3, 2) and (meta[:, 1] >> 4 == 0).all()
    assert torch.equal(decompress(values, meta, 12), w)


def test_compressed_bytes():
    for (n, m), dtype in [((2, 4), torch.float16), ((2, 4), torch.float32), ((1, 4), torch.bfloat16),
                          ((2, 8), torch.float16)]:
        out_features, in_features = 16, 64
        b = compressed_nbytes(out_features, in_features, dtype, n, m)
        elem = torch.empty((), dtype=dtype).element_size()
        assert b["dense"] == out_features * in_features * elem
        assert b["values"] == b["dense"] * n // m
        assert b["meta"] * 8 == out_features * (in_features // m) * n * index_bits(m)
        values, meta = compress(random_nm(out_features, in_features, n, m, seed=5, dtype=dtype), n, m)
        assert values.nbytes == b["values"] and meta.nbytes == b["meta"]
        assert b["compressed"] == values.nbytes + meta.nbytes
    # 2:4 in fp16: half the values plus 4 bits per group of 4 = 0.5625 of the dense bytes
    assert compressed_nbytes(4096, 4096, torch.float16)["compressed"] / (2 * 4096**2) == 0.5625
    assert index_bits(4) == 2 and index_bits(2) == 1 and index_bits(1) == 1 and index_bits(5) == 3


def test_compress_rejects_bad_input():
    w = random_nm(4, 16, 2, 4, seed=6)
    w[2, 5] = w[2, 6] = w[2, 7] = 1.0  # row 2, group 1 gets >= 3 nonzeros
    with pytest.raises(ValueError, match=r"not 2:4 sparse: row 2, group 1 \(inputs 4..7\)"):
        compress(w)
    with pytest.raises(ValueError, match=r"m=4 is not allowed; use a divisor of in_features=18"):
        compress(torch.zeros(2, 18))
    with pytest.raises(ValueError, match=r"n=5, m=4 is not allowed; N:M sparsity needs n <= m"):
        compress(torch.zeros(2, 16), n=5, m=4)
    with pytest.raises(ValueError, match=r"m=0 is out of range; allowed: \[1, inf\)"):
        compress(torch.zeros(2, 16), n=1, m=0)
    with pytest.raises(ValueError, match=r"weight must have 2 dimensions, got shape \(16,\)"):
        compress(torch.zeros(16))


def test_decompress_rejects_bad_input():
    values, meta = compress(random_nm(3, 16, 2, 4, seed=7))
    with pytest.raises(ValueError, match=r"values must have shape \(out, 10\)"):
        decompress(values, meta, 20)
    with pytest.raises(TypeError, match=r"meta must be uint8 .*, got torch\.int32"):
        decompress(values, meta.to(torch.int32), 16)
    with pytest.raises(ValueError, match=r"in_features=18 is not allowed; use a multiple of m=4"):
        decompress(values, meta, 18)
    bad = meta.clone()
    bad[1, 0] = 0x00  # positions (0, 0): not increasing
    with pytest.raises(ValueError, match=r"not increasing within a group"):
        decompress(values, bad, 16)
    v, mt = compress(random_nm(2, 10, 2, 5, seed=8), 2, 5)
    mt[0, 0] |= 0b111  # first position = 7 >= m
    with pytest.raises(ValueError, match=r"positions outside 0..4"):
        decompress(v, mt, 10, 2, 5)
