"""lab.kernels.dense (the dense baseline: y = x Wᵀ, decode GEMV with split-K and the tiled GEMM) against float64.

The Triton kernel runs on the CPU under TRITON_INTERPRET=1 (fp32 and fp16: the interpreter computes bf16 tl.dot
wrongly; bf16 is covered by the PyTorch path and the CUDA test) with NaN-poisoned outputs and partials (as in
tests/kernels/test_int4.py: ``torch.empty`` of the module fills NaN, so every element the kernels own must be
written); int4's reduction kernel, which it reuses, is reloaded with it.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from lab.bench.static import CUDA_TEST_SHAPES
from lab.kernels import dense as dense_module
from lab.kernels import int4 as int4_module
from lab.kernels import int8 as int8_module
from lab.kernels.split import busiest_sm_steps
from tests.kernels.interpreted import reloaded
from tests.kernels.test_int4 import NO_CUDA, _assert_close, _gen, _PoisonedTorch

CUDA_DENSE = CUDA_TEST_SHAPES["test_cuda_dense_kernel_matches_float64"][0]     # the sm_90 compile covers them


def random_operands(M: int, N: int, K: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    return torch.randn(M, K, generator=g).to(dtype), (torch.randn(N, K, generator=g) / K ** 0.5).to(dtype)


def reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x.double() @ w.double().T


# --- sizes, bytes and the PyTorch path --------------------------------------------------------------------------

def test_call_bytes_follows_the_formula():
    M, N, K = 3, 64, 256
    base = 2 * N * K + 2 * M * K + 2 * M * N
    assert dense_module.call_bytes(M, N, K, 2, split_k=1) == base
    assert dense_module.call_bytes(M, N, K, 2, split_k=5) == base + 8 * 5 * M * N
    split_k = dense_module.block_sizes(1, 8192, 8192)[3]
    assert dense_module.call_bytes(1, 8192, 8192, 2) == 2 * (8192 * 8192 + 2 * 8192) + 8 * split_k * 8192
    assert dense_module.call_bytes(4096, 8192, 8192, 4) == 4 * (8192 * 8192 + 2 * 4096 * 8192)    # no split
    with pytest.raises(ValueError, match=r"element_bytes=3 is not allowed"):
        dense_module.call_bytes(M, N, K, 3)
    with pytest.raises(TypeError, match=r"split_k must be an int, got True"):
        dense_module.call_bytes(M, N, K, 2, split_k=True)


def test_block_sizes_balance_the_sms_and_bound_the_partials():
    """8192 × 8192: at M = 1, 4, 16 at least one program per SM and partials ≤ 5 % of the weight's bytes; in bf16
    the busiest of 132 SMs runs an even share of the K steps, rounded up (fp32's smaller tiles, 128 × 256 steps,
    cannot split evenly within the cap); decode swaps the operands (BLOCK_M ≤ 16), prefill does not split K."""
    for dtype in (torch.bfloat16, torch.float32):
        e = dtype.itemsize
        for M in (1, 4, 16):
            block_m, block_n, block_k, split_k, _ = dense_module.block_sizes(M, 8192, 8192, dtype)
            tiles, steps = 8192 // block_n, 8192 // block_k
            assert block_m == (8 if M <= 8 else 16) and split_k <= steps
            if e == 2:
                assert busiest_sm_steps(tiles, steps, split_k) == math.ceil(tiles * steps / 132)
            assert tiles * split_k >= 132 and 8 * split_k * M * 8192 <= 0.05 * e * 8192 * 8192
        block_m, _, _, split_k, _ = dense_module.block_sizes(4096, 8192, 8192, dtype)
        assert block_m > 16 and split_k == 1
    assert dense_module.block_sizes(1, 40, 200)[3] == 2                  # never more splits than K steps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M, N, K", [(1, 24, 64), (5, 40, 200), (33, 16, 96)])
def test_torch_path_matches_float64(M, N, K, dtype, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, w = random_operands(M, N, K, dtype, seed=M + N + K)
    y = dense_module.dense_matmul(x, w)
    assert y.dtype == dtype and y.shape == (M, N)
    assert torch.equal(y, dense_module.dense_matmul_torch(x, w))
    _assert_close(y, reference(x, w), dtype)


def test_dispatch_on_the_cpu_takes_the_torch_path(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(dense_module, "dense_matmul_triton", lambda *args: pytest.fail("the Triton path ran"))
    dense_module.dense_matmul(*random_operands(2, 8, 16, torch.float32, seed=0))


X, W = random_operands(2, 24, 64, torch.float32, seed=1)


@pytest.mark.parametrize("block, error, match", [
    ((8, 32, 32, 0, 4), ValueError, r"block SPLIT_K=0 is out of range"),         # would return uninitialised memory
    ((8, 48, 32, 1, 4), ValueError, r"block BLOCK_N=48 is not allowed; use a positive power of two"),
    ((8, 32, 8, 1, 4), ValueError, r"\(BLOCK_M, BLOCK_N, BLOCK_K\) = \(8, 32, 8\) is not allowed: tl\.dot needs"),
    ((4, 32, 32, 1, 4), ValueError, r"tl\.dot needs BLOCK_M ≥ 8"),
    ((8, 32, 32, 1), TypeError, r"block must be a tuple \(BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, num_warps\)"),
])
def test_triton_refuses_bad_tiles_by_name(block, error, match):
    with pytest.raises(error, match=match):
        dense_module.dense_matmul_triton(X, W, block=block)


# --- the Triton kernels under the interpreter ------------------------------------------------------------------

@pytest.fixture(scope="module")
def interpreted():
    """The kernel module re-imported under TRITON_INTERPRET=1, after int4 (its split-K reduction) and int8 (its
    program order), and restored afterwards."""
    for _, _, module in reloaded(int4_module, int8_module, dense_module):
        yield module


def _check(module, x: torch.Tensor, w: torch.Tensor, block=None, monkeypatch=None) -> None:
    (M, K), N = x.shape, w.shape[0]
    poisoned = _PoisonedTorch()
    monkeypatch.setattr(module, "torch", poisoned)
    y = module.dense_matmul_triton(x, w, block=block)
    split_k = (block or module.block_sizes(M, N, K, x.dtype))[3]
    assert poisoned.empty_calls == 1 + (split_k > 1)      # y, and the partials when K is split
    assert y.dtype == x.dtype and y.shape == (M, N) and not y.isnan().any()
    _assert_close(y, reference(x, w), x.dtype)


# bf16 is left out: triton 3.9's interpreter computes tl.dot on bf16 inputs wrongly (see test_int4.py)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("M", [1, 5, 16, 33])
@pytest.mark.parametrize("N, K", [(40, 200), (16, 64)])      # N and K not multiples of the default tiles
def test_kernel_under_interpreter_matches_float64(interpreted, M, N, K, dtype, monkeypatch):
    assert os.environ.get("TRITON_INTERPRET") == "1"
    _check(interpreted, *random_operands(M, N, K, dtype, seed=M * 100 + N + K), monkeypatch=monkeypatch)


@pytest.mark.parametrize("M, N, K, block", [
    (1, 33, 64, (8, 16, 16, 3, 4)),           # 3 splits over 4 steps (uneven), partial N tile
    (5, 70, 80, (8, 32, 16, 5, 4)),           # splits = steps, 3 N tiles (the last partial)
    (16, 20, 48, (16, 16, 16, 1, 4)),         # swapped, stored directly (no split, no reduction)
    (3, 16, 32, (8, 16, 16, 4, 4)),           # more splits than steps: the idle programs write zeros
    (33, 40, 72, (16, 16, 32, 2, 4)),         # swapped with 3 row tiles of x, split K
    (70, 40, 72, (32, 16, 32, 1, 4)),         # tiled: 3 × 3 tiles in grouped order, all partial
    (70, 40, 72, (32, 16, 32, 2, 4)),         # tiled with split K
])
@pytest.mark.parametrize("transpose", [False, True])
def test_kernel_under_interpreter_split_k_and_partial_tiles(interpreted, M, N, K, block, transpose, monkeypatch):
    x, w = random_operands(M, N, K, torch.float32, seed=M + N + K)
    if transpose:                                            # column-major views: any strides
        x, w = x.T.contiguous().T, w.T.contiguous().T
    _check(interpreted, x, w, block=block, monkeypatch=monkeypatch)


def test_dispatch_under_interpreter_uses_the_kernel(interpreted, monkeypatch):
    calls = []
    monkeypatch.setattr(interpreted, "dense_matmul_triton", lambda *args: calls.append(args) or torch.zeros(1))
    interpreted.dense_matmul(X, W)
    assert len(calls) == 1


# --- CUDA: the compiled kernels against float64 ----------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(NO_CUDA, reason="the compiled Triton kernels need a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("M", CUDA_DENSE.batches)
@pytest.mark.parametrize("N, K", CUDA_DENSE.weights)
def test_cuda_dense_kernel_matches_float64(M, N, K, dtype):
    x, w = random_operands(M, N, K, dtype, seed=M + N)
    y = dense_module.dense_matmul(x.cuda(), w.cuda())
    assert y.is_cuda and y.dtype == dtype and y.shape == (M, N)
    _assert_close(y.cpu(), reference(x, w), dtype)
    _assert_close(y.cpu(), dense_module.dense_matmul_torch(x.cuda(), w.cuda()).cpu().double(), dtype)
