"""Properties of lab.kernels' entry checks: strided and transposed views of x, the weights (dense ones too), block
tables and lengths give the contiguous result (the PyTorch paths; for a few tiny cases the Triton kernels under the
interpreter), bad sizes are refused by name, and the byte counts are non-negative ints."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lab.formats import compress, pack_int4, pack_int4_v2
from lab.kernels import dense as dense_module
from lab.kernels import dense_matmul
from lab.kernels import int4 as int4_module
from lab.kernels import int4_gemv_v2, int4_weight_only_matmul
from lab.kernels import int8 as int8_module
from lab.kernels import int8_matmul
from lab.kernels import paged_attention as paged_module
from lab.kernels import paged_attention_decode, paged_attention_decode_v2_triton
from lab.kernels import sparse24 as sparse24_module
from lab.kernels import sparse24_matmul, sparse24_matmul_v2
from tests.kernels.interpreted import reloaded
from tests.properties import NOT_INTS, SEEDS, VIEWS, generator, view

FAST = settings(max_examples=20)
INTERPRETED = settings(max_examples=2)   # Triton's interpreter is slow




def _int4(seed: int, M: int, N: int, groups: int, g: int):
    q = torch.randint(0, 16, (N, groups * g), generator=generator(seed))
    x = torch.randn(M, groups * g, generator=generator(seed + 1))
    zeros = torch.randint(0, 16, (groups, N), generator=generator(seed + 3)).float()
    return q, x, torch.rand(groups, N, generator=generator(seed + 2)) + 0.1, zeros


def _sparse24(seed: int, M: int, N: int, K: int):
    w = torch.randn(N, K, generator=generator(seed)) * (torch.arange(K) % 4 < 2)     # keeps positions 0, 1 of each 4
    values, meta = compress(w)
    return torch.randn(M, K, generator=generator(seed + 1)), values, meta


def _paged(seed: int, lengths: list[int], block_size: int = 4, D: int = 16):
    g, B, blocks = generator(seed), len(lengths), max(-(-n // block_size) for n in lengths)
    q = torch.randn(B, 4, D, generator=g)
    k_pool, v_pool = (torch.randn(B * blocks + 1, block_size, 2, D, generator=g) for _ in range(2))
    tables = torch.randperm(B * blocks + 1, generator=g)[:B * blocks].view(B, blocks).int()
    return q, k_pool, v_pool, tables, torch.tensor(lengths, dtype=torch.int32)


@FAST
@given(seed=SEEDS, M=st.integers(1, 4), N=st.integers(1, 6), groups=st.integers(1, 2), how=VIEWS)
def test_int4_torch_paths_of_views_equal_the_contiguous_result(seed, M, N, groups, how):
    q, x, scales, zeros = _int4(seed, M, N, groups, 64)
    packed = pack_int4(q, 64)
    y = int4_weight_only_matmul(x, packed, scales, zeros, 64)
    assert torch.equal(int4_weight_only_matmul(view(x, how), packed, view(scales, how), view(zeros, how), 64), y)
    v2 = pack_int4_v2(q, 64)                              # v2: x copied if strided; scales unit stride along N
    y2 = int4_gemv_v2(x, v2, scales, zeros, 64)
    assert torch.equal(int4_gemv_v2(view(x, how), v2, view(scales, "rows"), view(zeros, "rows"), 64), y2)


@FAST
@given(seed=SEEDS, M=st.integers(1, 5), N=st.integers(1, 6), K=st.integers(1, 40), how=VIEWS)
def test_dense_torch_path_of_views_equals_the_contiguous_result(seed, M, N, K, how):
    x, w = torch.randn(M, K, generator=generator(seed)), torch.randn(N, K, generator=generator(seed + 1))
    assert torch.equal(dense_matmul(view(x, how), view(w, how)), dense_matmul(x, w))


@FAST
@given(seed=SEEDS, M=st.integers(1, 5), N=st.integers(1, 6), K=st.integers(1, 40), how=VIEWS)
def test_int8_torch_path_of_views_equals_the_contiguous_result(seed, M, N, K, how):
    a, b = (torch.randint(-128, 128, (n, K), generator=generator(seed + n), dtype=torch.int8) for n in (M, N))
    a_scale, b_scale = torch.rand(M, generator=generator(seed)), torch.rand(N, generator=generator(seed + 1))
    y = int8_matmul(a, b, a_scale, b_scale, torch.float32)
    strided_scales = (view(a_scale[None], "strided")[0], view(b_scale[None], "strided")[0])
    assert torch.equal(int8_matmul(view(a, how), view(b, how), *strided_scales, torch.float32), y)


@FAST
@given(seed=SEEDS, M=st.integers(1, 4), N=st.integers(1, 6), K=st.sampled_from([8, 16, 32]), how=VIEWS)
def test_sparse24_torch_paths_of_views_equal_the_contiguous_result(seed, M, N, K, how):
    x, values, meta = _sparse24(seed, M, N, K)
    y = sparse24_matmul(x, values, meta, N, K)
    for f in (sparse24_matmul, sparse24_matmul_v2):
        assert torch.equal(f(view(x, how), view(values, how), view(meta, how), N, K), y)


@FAST
@given(seed=SEEDS, lengths=st.lists(st.integers(1, 13), min_size=1, max_size=3), how=VIEWS)
def test_paged_torch_path_of_views_equals_the_contiguous_result(seed, lengths, how):
    q, k_pool, v_pool, tables, lengths_t = _paged(seed, lengths)
    out = paged_attention_decode(q, k_pool, v_pool, tables, lengths_t)
    strided_lengths = view(lengths_t[None], "strided")[0]
    assert torch.equal(paged_attention_decode(view(q, how), view(k_pool, how), view(v_pool, how),
                                              view(tables, how), strided_lengths), out)


@FAST
@given(value=st.one_of(NOT_INTS, st.integers(max_value=0)),
       arg=st.sampled_from(["group_size", "out_features", "in_features", "splits"]))
def test_bad_sizes_are_refused_by_name(value, arg):
    assume(not (arg == "splits" and value is None))                  # splits=None: the default
    q, x, scales, zeros = _int4(0, 2, 4, 1, 64)
    xs, values, meta = _sparse24(0, 2, 4, 16)
    paged = _paged(0, [20, 3], block_size=16)
    call = {"group_size": lambda: int4_weight_only_matmul(x, pack_int4(q, 64), scales, zeros, value),
            "out_features": lambda: sparse24_matmul(xs, values, meta, value, 16),
            "in_features": lambda: sparse24_matmul(xs, values, meta, 4, value),
            "splits": lambda: paged_attention_decode_v2_triton(*paged, splits=value)}[arg]
    with pytest.raises(ValueError if isinstance(value, int) and not isinstance(value, bool) else TypeError,
                       match=rf"{arg}\b"):
        call()


@FAST
@given(M=st.integers(1, 64), N=st.integers(1, 4096), K=st.integers(1, 4096), e=st.sampled_from([1, 2, 4]),
       split_k=st.integers(1, 16), version=st.sampled_from(["v1", "v2"]))
def test_call_bytes_are_non_negative_ints_at_least_the_operands(M, N, K, e, split_k, version):
    g = 64
    K = g * -(-K // g)
    for n in (int4_module.call_bytes(M, N, K, g, e, version, split_k), int8_module.call_bytes(M, N, K, e),
              sparse24_module.call_bytes(M, N, K, e),
              paged_module.call_bytes(M, 8, 2, 16, 16, K, e, version, split_k)):
        assert isinstance(n, int) and n > 0
    assert int8_module.call_bytes(M, N, K, e) >= M * K + N * K
    if e > 1:                                                            # the dense baseline: 16- or 32-bit elements
        assert dense_module.call_bytes(M, N, K, e, split_k) >= e * (N * K + M * K + M * N)
    with pytest.raises(TypeError, match=r"split_k must be an int, got True"):
        int4_module.call_bytes(M, N, K, g, e, version, True)


# --- the Triton kernels under the interpreter (last: the fixture stays active to the end of the module) ------

@pytest.fixture(scope="module")
def interpreted():
    """The kernel modules re-imported under TRITON_INTERPRET=1 (and restored afterwards)."""
    yield from reloaded(int4_module, int8_module, paged_module, sparse24_module, dense_module)   # int4 before bf16


@INTERPRETED
@given(seed=SEEDS, lengths=st.lists(st.integers(1, 9), min_size=1, max_size=2))
def test_paged_kernel_reads_strided_tables_and_lengths_as_their_values(interpreted, seed, lengths):
    paged = interpreted[2]
    q, k_pool, v_pool, tables, lengths_t = _paged(seed, lengths)
    out = paged.paged_attention_decode(q, k_pool, v_pool, tables, lengths_t)
    torch.testing.assert_close(out, paged.paged_attention_decode_torch(q, k_pool, v_pool, tables, lengths_t))
    assert torch.equal(paged.paged_attention_decode(view(q, "transposed"), k_pool, v_pool, view(tables, "transposed"),
                                                    view(lengths_t[None], "strided")[0]), out)


@INTERPRETED
@given(seed=SEEDS, M=st.integers(1, 3), N=st.integers(1, 5), how=VIEWS)
def test_matmul_kernels_read_views_as_their_values(interpreted, seed, M, N, how):
    int4, int8, _, sparse24, _ = interpreted
    x, values, meta = _sparse24(seed, M, N, 16)
    y = sparse24.sparse24_matmul(x, values, meta, N, 16)
    assert torch.equal(sparse24.sparse24_matmul(view(x, how), view(values, how), view(meta, how), N, 16), y)
    a, b = (torch.randint(-128, 128, (n, 32), generator=generator(seed + n), dtype=torch.int8) for n in (M, N))
    ones = torch.ones(M), torch.ones(N)
    assert torch.equal(int8.int8_matmul(view(a, how), view(b, how), *ones, torch.float32),
                       int8.int8_matmul(a, b, *ones, torch.float32))
    q, x4, scales, zeros = _int4(seed, M, N, 1, 32)
    packed = pack_int4(q, 32)
    assert torch.equal(int4.int4_weight_only_matmul(view(x4, how), packed, scales, zeros, 32),
                       int4.int4_weight_only_matmul(x4, packed, scales, zeros, 32))


@INTERPRETED
@given(seed=SEEDS, M=st.sampled_from([1, 17]), N=st.integers(1, 5), how=VIEWS)
def test_dense_kernel_reads_views_as_their_values(interpreted, seed, M, N, how):
    """Decode (split K, operands swapped) and the tiled GEMM read strided x and W through their strides."""
    dense = interpreted[4]
    x, w = torch.randn(M, 40, generator=generator(seed)), torch.randn(N, 40, generator=generator(seed + 1))
    assert torch.equal(dense.dense_matmul(view(x, how), view(w, how)), dense.dense_matmul(x, w))


@INTERPRETED
@given(seed=SEEDS, M=st.integers(1, 3), N=st.integers(1, 5), how=VIEWS)
def test_v2_kernels_copy_a_strided_x(interpreted, seed, M, N, how):
    int4, _, _, sparse24, _ = interpreted
    q, x, scales, zeros = _int4(seed, M, N, 1, 64)
    v2 = pack_int4_v2(q, 64)
    assert torch.equal(int4.int4_gemv_v2(view(x, how), v2, scales, zeros, 64),
                       int4.int4_gemv_v2(x, v2, scales, zeros, 64))
    xs, values, meta = _sparse24(seed, M, N, 32)
    assert torch.equal(sparse24.sparse24_matmul_v2(view(xs, how), values, meta, N, 32),
                       sparse24.sparse24_matmul_v2(xs, values, meta, N, 32))
