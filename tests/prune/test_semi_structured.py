"""lab.prune.semi_structured and lab.kernels.sparse24_matmul against independent references.

References: the input weight itself (exact round trip), a hand-packed 2:4 example and a
per-group Python decoding of the documented metadata layout, closed-form byte counts, float64
matmuls, and (CUDA only) `torch.sparse.to_sparse_semi_structured`. The Triton kernel runs on
the CPU under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

from lab.core import runtime
from lab.kernels import sparse24_matmul as kernel_module
from lab.prune.semi_structured import (Sparse24Linear, compress, compressed_nbytes, decompress, index_bits,
                                       meta_shape, sparse_linear_torch, to_semi_structured_torch)

NO_CUDA = not torch.cuda.is_available()


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


# ---------------------------------------------------------------------------------------------
# compress / decompress
# ---------------------------------------------------------------------------------------------

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
    with pytest.raises(ValueError, match=r"meta must be uint8 of shape \(3, 2\)"):
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


# ---------------------------------------------------------------------------------------------
# PyTorch semi-structured path (CUDA) and the CPU path of sparse24_matmul
# ---------------------------------------------------------------------------------------------

def test_to_semi_structured_torch_needs_cuda():
    w = random_nm(64, 64, 2, 4, seed=9, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"needs a CUDA tensor.*device=cpu"):
        to_semi_structured_torch(w)
    with pytest.raises(TypeError, match=r"w_sparse must come from to_semi_structured_torch"):
        sparse_linear_torch(torch.zeros(1, 64), w)


@pytest.mark.cuda
@pytest.mark.skipif(NO_CUDA, reason="torch semi-structured sparse tensors need CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_semi_structured_linear_matches_float64(dtype):
    w = random_nm(256, 512, 2, 4, seed=10, dtype=dtype).cuda()
    x = torch.randn(2, 5, 512, generator=torch.Generator().manual_seed(11)).to(dtype).cuda()
    y = sparse_linear_torch(x, to_semi_structured_torch(w))
    ref = x.double() @ w.double().t()
    assert y.shape == (2, 5, 256)
    torch.testing.assert_close(y.double(), ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())
    values, meta = compress(w)
    y24 = kernel_module.sparse24_matmul(x.view(10, 512), values, meta, 256, 512)
    torch.testing.assert_close(y24.double(), ref.view(10, 256), rtol=2e-2, atol=2e-2 * ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sparse24_matmul_cpu_path_matches_float64(dtype, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    w = random_nm(24, 32, 2, 4, seed=12, dtype=dtype)
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(13)).to(dtype)
    values, meta = compress(w)
    y = kernel_module.sparse24_matmul(x, values, meta, 24, 32)
    ref = x.double() @ w.double().t()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())


def test_sparse24_matmul_rejects_bad_input():
    values, meta = compress(random_nm(8, 32, 2, 4, seed=14))
    x = torch.zeros(2, 32)
    f = kernel_module.sparse24_matmul
    with pytest.raises(ValueError, match=r"x must have shape \(M, in_features=32\)"):
        f(torch.zeros(2, 16), values, meta, 8, 32)
    with pytest.raises(TypeError, match=r"x and values must share one dtype"):
        f(x.half(), values, meta, 8, 32)
    with pytest.raises(ValueError, match=r"values must have shape \(4, 16\)"):
        f(x, values, meta, 4, 32)
    with pytest.raises(ValueError, match=r"meta must be uint8 of shape \(8, 4\)"):
        f(x, values, meta[:, :2], 8, 32)
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor, got list"):
        f([[0.0] * 32] * 2, values, meta, 8, 32)
    with pytest.raises(ValueError, match=r"BLOCK_K=12 must be a multiple of 8"):
        kernel_module.sparse24_matmul_triton(x, values, meta, 8, 32, block=(16, 16, 12, 4))


# ---------------------------------------------------------------------------------------------
# The Triton kernel under the interpreter
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def interpreted():
    """The kernel module re-imported under TRITON_INTERPRET=1 (and restored afterwards)."""
    with runtime.triton_interpret():
        module = importlib.reload(kernel_module)
        yield module
    importlib.reload(kernel_module)


def _check_kernel(module, M: int, N: int, K: int, dtype: torch.dtype, seed: int, block=None,
                  transpose_x: bool = False) -> None:
    gen = torch.Generator().manual_seed(seed)
    w = random_nm(N, K, 2, 4, seed=seed + 1, dtype=dtype)
    x = torch.randn(K, M, generator=gen).to(dtype).t() if transpose_x else torch.randn(M, K, generator=gen).to(dtype)
    values, meta = compress(w)
    out = torch.full((M, N), float("nan"), dtype=dtype)  # poisoned: every element must be written
    y = module.sparse24_matmul_triton(x, values, meta, N, K, block=block, out=out)
    assert y is out and not y.isnan().any()
    ref = x.double() @ decompress(values, meta, K).double().t()
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())


# bf16 is left out here: triton 3.9's interpreter computes tl.dot on bf16 inputs wrongly (it reads
# the raw 16-bit patterns); bf16 is covered by the CPU path above and by the GPU bench.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("N", [16, 48])
@pytest.mark.parametrize("K", [32, 64])
@pytest.mark.parametrize("M", [1, 3, 16])
def test_kernel_under_interpreter_matches_float64(interpreted, M, N, K, dtype):
    assert os.environ.get("TRITON_INTERPRET") == "1"
    _check_kernel(interpreted, M, N, K, dtype, seed=1000 * M + 10 * N + K + (dtype == torch.float16))


@pytest.mark.parametrize("M, N, K, block", [(20, 40, 72, (16, 16, 32, 4)),   # 2x3 tiles, 3 K-steps, masked
                                            (5, 33, 36, (16, 32, 16, 4)),    # odd group count, partial tiles
                                            (17, 16, 64, None)])             # default blocks, M > 16
def test_kernel_under_interpreter_with_partial_tiles(interpreted, M, N, K, block):
    _check_kernel(interpreted, M, N, K, torch.float32, seed=M + N + K, block=block, transpose_x=True)
    assert interpreted.sparse24_matmul(torch.zeros(2, K), *compress(torch.zeros(N, K)), N, K).abs().max() == 0


@pytest.mark.parametrize("bias", [False, True])
def test_sparse24_linear_equals_the_pruned_dense_linear(bias):
    linear = torch.nn.Linear(64, 24, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(random_nm(24, 64, 2, 4, seed=3))
    layer = Sparse24Linear(linear, dtype=torch.float32)
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(layer(x), linear(x), rtol=1e-5, atol=1e-5)
    assert layer.values.shape == (24, 32) and layer.meta.shape == (24, 8)


def test_sparse24_linear_int4_values_are_rounded_kept_values():
    from lab.quant.affine import dequantize
    from lab.quant.model import rtn_quantize

    linear = torch.nn.Linear(64, 16, bias=False)
    with torch.no_grad():
        linear.weight.copy_(random_nm(16, 64, 2, 4, seed=5))
    layer = Sparse24Linear(linear, value_bits=4, group_size=8, dtype=torch.float32)
    values, meta = compress(linear.weight.detach())
    expected = decompress(dequantize(rtn_quantize(values, 4, 8)), meta, 64)      # (16, 64), still 2:4
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(layer(x), x @ expected.t(), rtol=1e-5, atol=1e-5)
    assert layer.packed.dtype == torch.uint8 and layer.packed.numel() == 16 * 32 // 2


def test_sparse24_linear_rejects_bad_input():
    with pytest.raises(TypeError, match="linear must be an nn.Linear"):
        Sparse24Linear(torch.nn.Conv1d(4, 4, 1))
    with pytest.raises(ValueError, match="value_bits=3 is not allowed"):
        Sparse24Linear(torch.nn.Linear(8, 4), value_bits=3)
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        Sparse24Linear(torch.nn.Linear(8, 4))
