"""lab.kernels.sparse24_matmul_v2 against a float64 product with the decompressed weight and against v1.

The weights are random 2:4 patterns (tests/prune/test_semi_structured.py's `random_nm`, with an all-zero
group), compressed by `lab.prune.semi_structured.compress`. The kernel runs under TRITON_INTERPRET=1
(fp32 and fp16) with NaN-filled outputs, on partial tiles in every dimension; compiled, on a GPU.
"""

from __future__ import annotations

import pytest
import torch

from lab.kernels import sparse24_matmul as v1_module
from lab.kernels import sparse24_matmul_v2 as v2_module
from lab.prune.semi_structured import compress, decompress
from tests.kernels.interpreted import reloaded
from tests.prune.test_semi_structured import NO_CUDA, random_nm


@pytest.fixture(scope="module")
def interpreted():
    yield from reloaded(v2_module, v1_module)


def _case(M, N, K, dtype, seed):
    w = random_nm(N, K, 2, 4, seed=seed, dtype=dtype)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    values, meta = compress(w)
    return x, values, meta, x.double() @ decompress(values, meta, K).double().t()


def _close(y: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())


@pytest.mark.parametrize("M, N, K, block, dtype", [
    (1, 16, 32, (8, 16, 32, 4), torch.float32),         # one tile
    (3, 48, 64, (8, 16, 64, 4), torch.float16),         # 3 N tiles
    (20, 40, 96, (16, 16, 64, 4), torch.float32),       # partial N, M and K tiles (96 = 64 + 32)
    (5, 33, 160, (16, 32, 32, 4), torch.float32),       # odd N, 5 K steps
    (17, 16, 64, None, torch.float32),                  # default blocks, M > 16
    (2, 130, 256, None, torch.float16),                 # default decode blocks, partial N tile
])
def test_v2_under_interpreter_matches_float64_and_v1(interpreted, monkeypatch, M, N, K, block, dtype):
    v2, v1 = interpreted
    x, values, meta, ref = _case(M, N, K, dtype, seed=M + N + K)
    with monkeypatch.context() as patch:
        patch.setattr(v2.torch, "empty", lambda *a, **k: torch.full(a, float("nan"), **k))
        y = v2.sparse24_matmul_v2_triton(x, values, meta, N, K, block=block)
    assert y.dtype == dtype and y.shape == (M, N) and not y.isnan().any()
    _close(y, ref, dtype)
    _close(y, v1.sparse24_matmul_triton(x, values, meta, N, K).double(), dtype)


def test_v2_dispatch_on_the_cpu_is_v1s_torch_path(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, values, meta, _ = _case(3, 24, 64, torch.float32, seed=0)
    assert torch.equal(v2_module.sparse24_matmul_v2(x, values, meta, 24, 64),
                       v1_module.sparse24_matmul_torch(x, values, meta, 24, 64))


def test_block_sizes_keep_about_one_program_per_sm_at_decode():
    assert 8192 // v2_module.block_sizes(1)[1] >= 128 and v2_module.block_sizes(1)[0] == 8
    assert v2_module.block_sizes(16)[0] == 16 and v2_module.block_sizes(2048)[:2] == (64, 128)


@pytest.mark.parametrize("change, error, match", [
    (lambda a: (a[0][:, :48].contiguous(), a[1][:, :24].contiguous(), a[2][:, :6].contiguous(), 16, 48), ValueError,
     r"in_features=48 must be a multiple of 32"),
    (lambda a: (a[0].T.contiguous().T, *a[1:]), ValueError, r"x contiguous along K"),
    (lambda a: (a[0], a[1].half(), *a[2:]), TypeError, r"x and values must share one dtype"),
    (lambda a: (*a[:2], a[2][:, :4], *a[3:]), ValueError, r"meta must be uint8 of shape \(16, 8\)"),
])
def test_v2_rejects_bad_input(change, error, match):
    x, values, meta, _ = _case(4, 16, 64, torch.float32, seed=2)
    with pytest.raises(error, match=match):
        v2_module.sparse24_matmul_v2_triton(*change((x, values, meta, 16, 64)))


def test_v2_rejects_a_block_k_that_splits_metadata_words():
    x, values, meta, _ = _case(4, 16, 64, torch.float32, seed=2)
    with pytest.raises(ValueError, match=r"BLOCK_K=16 must be a multiple of 32"):
        v2_module.sparse24_matmul_v2_triton(x, values, meta, 16, 64, block=(16, 16, 16, 4))


@pytest.mark.cuda
@pytest.mark.skipif(NO_CUDA, reason="the compiled Triton kernels need a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M", [1, 10, 16])
def test_cuda_v2_matches_float64_and_v1(M, dtype):
    x, values, meta, ref = _case(M, 256, 512, dtype, seed=M)      # the shape of the v1 CUDA test
    y = v2_module.sparse24_matmul_v2(x.cuda(), values.cuda(), meta.cuda(), 256, 512)
    tol = 2e-2
    torch.testing.assert_close(y.cpu().double(), ref, rtol=tol, atol=tol * ref.abs().max().item())
    y1 = v1_module.sparse24_matmul(x.cuda(), values.cuda(), meta.cuda(), 256, 512)
    torch.testing.assert_close(y.cpu().double(), y1.cpu().double(), rtol=tol, atol=tol * ref.abs().max().item())
