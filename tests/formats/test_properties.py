"""Properties of lab.formats: pack/unpack and compress/decompress round trips hold on strided and transposed
views as on contiguous tensors, bad sizes are refused by name, and the byte counts are non-negative."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.formats import (compress, compressed_nbytes, decompress, index_bits, meta_shape, pack_bits, pack_int4,
                         pack_int4_v2, unpack_bits, unpack_int4, unpack_int4_v2)
from tests.properties import NOT_INTS, SEEDS, VIEWS, generator, view

FAST = settings(max_examples=25)




@FAST
@given(seed=SEEDS, n=st.integers(1, 5), groups=st.integers(1, 3), g=st.sampled_from([4, 8, 16]), how=VIEWS)
def test_int4_layouts_of_views_equal_those_of_contiguous_codes(seed, n, groups, g, how):
    q = torch.randint(0, 16, (n, groups * g), generator=generator(seed))
    p1, p2 = pack_int4(q, g), pack_int4_v2(q, g)
    assert torch.equal(pack_int4(view(q, how), g), p1) and torch.equal(pack_int4_v2(view(q, how), g), p2)
    assert torch.equal(unpack_int4(view(p1, how), g).long(), q)
    assert torch.equal(unpack_int4_v2(view(p2, how), g).long(), q)


@FAST
@given(seed=SEEDS, rows=st.integers(1, 5), groups=st.integers(1, 4), nm=st.sampled_from([(2, 4), (1, 4), (2, 8)]),
       how=VIEWS)
def test_compress_round_trips_on_views(seed, rows, groups, nm, how):
    n, m = nm
    w = torch.randn(rows, groups * m, generator=generator(seed))
    keep = torch.rand(rows, groups, m, generator=generator(seed + 1)).argsort(-1).argsort(-1) < n   # n kept per group
    w = w * keep.reshape(rows, -1)
    values, meta = compress(w, n, m)
    assert all(torch.equal(a, b) for a, b in zip(compress(view(w, how), n, m), (values, meta)))
    assert torch.equal(decompress(view(values, how), view(meta, how), groups * m, n, m), w)
    assert tuple(meta.shape) == meta_shape(rows, groups * m, n, m)


@FAST
@given(seed=SEEDS, rows=st.integers(1, 4), length=st.integers(1, 12), bits=st.integers(1, 8), how=VIEWS)
def test_pack_bits_round_trips_on_views(seed, rows, length, bits, how):
    idx = torch.randint(0, 2**bits, (rows, length), generator=generator(seed))
    packed = pack_bits(idx, bits)
    assert torch.equal(pack_bits(view(idx, how), bits), packed)
    assert torch.equal(unpack_bits(view(packed, how), bits, length), idx)


@FAST
@given(seed=SEEDS, bits=st.integers(1, 8))
def test_pack_bits_refuses_indices_that_do_not_fit(seed, bits):
    idx = torch.randint(0, 2**bits, (2, 5), generator=generator(seed))
    idx[1, seed % 5] = 2**bits + seed % 3                  # one index one bit too wide: it was cut silently
    with pytest.raises(ValueError, match=rf"idx must hold values in \[0, 2\^bits = {2**bits}\)"):
        pack_bits(idx, bits)


@FAST
@given(value=st.one_of(NOT_INTS, st.integers(max_value=0)), arg=st.sampled_from(["group_size", "bits", "m", "n"]))
def test_bad_sizes_are_refused_by_name(value, arg):
    q = torch.zeros(2, 8, dtype=torch.int64)
    call = {"group_size": lambda: pack_int4(q, value), "bits": lambda: pack_bits(q, value),
            "m": lambda: index_bits(value), "n": lambda: meta_shape(2, 8, value, 4)}[arg]
    error = ValueError if isinstance(value, int) and not isinstance(value, bool) else TypeError
    with pytest.raises(error, match=rf"^{arg}\b"):
        call()


@FAST
@given(out_features=st.integers(0, 4096), groups=st.integers(1, 512), nm=st.sampled_from([(2, 4), (1, 4), (2, 8)]),
       dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32]))
def test_compressed_bytes_are_non_negative_and_below_dense(out_features, groups, nm, dtype):
    n, m = nm
    b = compressed_nbytes(out_features, groups * m, dtype, n, m)
    assert all(isinstance(v, int) and v >= 0 for v in b.values())
    assert b["compressed"] == b["values"] + b["meta"] <= b["dense"]
    assert b["meta"] * 8 >= out_features * groups * n * index_bits(m)
