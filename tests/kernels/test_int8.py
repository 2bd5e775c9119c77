"""lab.kernels.int8 (the W8A8 matmul, scales fused in the epilogue) against the exact integer product.

References: the integer sum A_q B_qᵀ exactly in int64, then the scales in float64. The Triton kernel runs
on the CPU under TRITON_INTERPRET=1 with NaN-poisoned outputs (as in tests/kernels/test_int4.py), on
partial tiles and in every program order of its tuning set; the CUDA test compares it on a GPU.
"""

from __future__ import annotations

import os

import pytest
import torch

from lab.bench.static import CUDA_TEST_SHAPES
from lab.kernels import int8 as int8_module
from tests.kernels.interpreted import reloaded
from tests.kernels.test_int4 import NO_CUDA, _assert_close, _gen, _PoisonedTorch

CUDA_INT8, = CUDA_TEST_SHAPES["test_cuda_int8_kernel_matches_the_integer_product"]   # the sm_90 compile covers them


def random_int8(M: int, N: int, K: int, seed: int):
    g = _gen(seed)
    a = torch.randint(-128, 128, (M, K), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8)
    a[0, :3] = torch.tensor([-128, 127, -128], dtype=torch.int8)
    b[0, :3] = torch.tensor([-128, -128, 127], dtype=torch.int8)
    a_scale = torch.rand(M, generator=g) * 0.01 + 1e-3
    b_scale = torch.rand(N, generator=g) * 0.01 + 1e-3
    return a, b, a_scale, b_scale


def integer_reference(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor, b_scale: torch.Tensor) -> torch.Tensor:
    """y = (A_q B_qᵀ) ⊙ (a_scale b_scaleᵀ): the integer sum exactly in int64, then the scales in float64."""
    return (a.long() @ b.long().T).double() * a_scale.double()[:, None] * b_scale.double()[None, :]


def test_call_bytes_follows_the_formula():
    assert int8_module.call_bytes(3, 40, 64, 2) == 3 * 64 + 40 * 64 + 4 * (3 + 40) + 2 * 3 * 40
    with pytest.raises(ValueError, match=r"K=0 is out of range"):
        int8_module.call_bytes(3, 40, 0, 2)


# --- the PyTorch path ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("M, N, K", [(1, 16, 32), (5, 40, 100), (33, 24, 2100)])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_int8_torch_path_matches_integer_reference(M, N, K, out_dtype, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    a, b, a_scale, b_scale = random_int8(M, N, K, seed=M + N + K)
    y = int8_module.int8_matmul(a, b, a_scale, b_scale, out_dtype)
    assert y.dtype == out_dtype and y.shape == (M, N)
    _assert_close(y, integer_reference(a, b, a_scale, b_scale), out_dtype)
    # with unit scales the float32 result is the integer sum itself (|sum| < 2^24)
    unit = int8_module.int8_matmul(a, b, torch.ones(M), torch.ones(N), torch.float32)
    assert torch.equal(unit.long(), a.long() @ b.long().T)


def test_int8_torch_path_is_exact_at_the_extremes(monkeypatch):
    """Sums up to 128²·K = 2^26 (K = 4096), beyond float32's exact integers: the chunked sum is exact, so the
    float32 result is the exact int64 sum rounded once."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    a = torch.full((2, 4096), -128, dtype=torch.int8)
    b = torch.full((3, 4096), -128, dtype=torch.int8)
    b[1, :3] = 127
    b[2] = torch.randint(-128, 128, (4096,), generator=_gen(24), dtype=torch.int8)
    a[1, ::7] = 127
    exact = a.long() @ b.long().T
    y = int8_module.int8_matmul_torch(a, b, torch.ones(2), torch.ones(3), torch.float32)
    assert exact.abs().max() > 2 ** 25 and torch.equal(y, exact.float())


A8, B8, SA8, SB8 = random_int8(4, 8, 32, seed=4)


@pytest.mark.parametrize("call, error, match", [
    (lambda f: f(A8.float(), B8, SA8, SB8), TypeError, r"a must be a 2-D int8 tensor, got torch\.float32"),
    (lambda f: f(A8, B8.to(torch.uint8), SA8, SB8), TypeError, r"b must be a 2-D int8 tensor, got torch\.uint8"),
    (lambda f: f(A8[0], B8, SA8, SB8), TypeError, r"a must be a 2-D int8 tensor"),
    (lambda f: f(A8, B8[:, :16], SA8, SB8), ValueError, r"a \(M, K\) and b \(N, K\) must share K"),
    (lambda f: f(torch.zeros(1, 133_000, dtype=torch.int8), torch.zeros(1, 133_000, dtype=torch.int8),
                 torch.ones(1), torch.ones(1)), ValueError, r"K=133000 must be < 133000"),
    (lambda f: f(A8, B8, SA8.double(), SB8), TypeError, r"a_scale must be a float32 tensor of shape \(4,\)"),
    (lambda f: f(A8, B8, SA8, SB8[:5]), TypeError, r"b_scale must be a float32 tensor of shape \(8,\)"),
    (lambda f: f(A8, B8, SA8[:, None], SB8), TypeError, r"a_scale must be"),
    (lambda f: f(A8, B8, SA8, SB8, torch.int32), TypeError, r"out_dtype must be one of"),
])
@pytest.mark.parametrize("path", ["torch", "triton"])
def test_int8_bad_input(call, error, match, path):
    f = getattr(int8_module, f"int8_matmul_{path}")
    with pytest.raises(error, match=match):
        call(f)


# --- the Triton kernel under the interpreter -------------------------------------------------------------------

@pytest.fixture(scope="module")
def interpreted():
    """The kernel module re-imported under TRITON_INTERPRET=1 (and restored afterwards)."""
    for (module,) in reloaded(int8_module):
        yield module


def _check_int8(module, M: int, N: int, K: int, out_dtype: torch.dtype, seed: int, block=None,
                transpose: bool = False, monkeypatch=None) -> None:
    a, b, a_scale, b_scale = random_int8(M, N, K, seed)
    if transpose:   # column-major operands: the kernel must use the strides
        a, b = a.T.contiguous().T, b.T.contiguous().T
    poisoned = _PoisonedTorch()
    monkeypatch.setattr(module, "torch", poisoned)
    y = module.int8_matmul_triton(a, b, a_scale, b_scale, out_dtype, block=block)
    assert poisoned.empty_calls == 1 and y.dtype == out_dtype and y.shape == (M, N) and not y.isnan().any()
    _assert_close(y, integer_reference(a, b, a_scale, b_scale), out_dtype)
    unit = module.int8_matmul_triton(a, b, torch.ones(M), torch.ones(N), torch.float32, block=block)
    assert torch.equal(unit.long(), a.long() @ b.long().T)     # the int32 accumulation is exact


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M, N, K", [(1, 16, 32), (3, 40, 128), (16, 64, 256), (17, 24, 160), (130, 20, 64)])
def test_int8_kernel_under_interpreter_matches_integer_reference(interpreted, M, N, K, out_dtype, monkeypatch):
    assert os.environ.get("TRITON_INTERPRET") == "1"
    _check_int8(interpreted, M, N, K, out_dtype, seed=M + N + K, monkeypatch=monkeypatch)


@pytest.mark.parametrize("M, N, K, block", [(5, 70, 100, (16, 32, 32, 1, 4, 3)),     # K not a multiple of BLOCK_K
                                            (20, 33, 64, (16, 16, 16, 1, 4, 3)),      # 2 x 3 partial tiles
                                            (7, 9, 300, (16, 16, 128, 1, 4, 3)),
                                            (70, 40, 64, (16, 16, 32, 2, 4, 3)),      # grouped: 5 x 3 tiles,
                                            (70, 40, 64, (16, 16, 32, 4, 4, 3)),      # a last group of 1
                                            (70, 40, 64, (16, 16, 32, 8, 4, 3))])     # one short group
@pytest.mark.parametrize("transpose", [False, True])
def test_int8_kernel_under_interpreter_partial_tiles(interpreted, M, N, K, block, transpose, monkeypatch):
    _check_int8(interpreted, M, N, K, torch.float32, seed=M * N + K, block=block, transpose=transpose,
                monkeypatch=monkeypatch)


def test_int8_tuning_set_and_the_tuner(monkeypatch):
    for M in (1, 16, 17, 128, 129, 4096):
        options = int8_module.candidates(M)
        assert options[0] == int8_module.block_sizes(M) and len(set(options)) == len(options)
        assert all(len(c) == 6 and c[2] >= 32 for c in options)    # int8 tl.dot: BLOCK_K >= 32
    a, b, a_scale, b_scale = random_int8(300, 8, 32, seed=3)
    assert int8_module.tuned_block(a, b, a_scale, b_scale, torch.float32) == int8_module.block_sizes(300)  # CPU

    class FakeCuda:   # a tensor that reports a CUDA device, to run the tuner's bookkeeping on a CPU
        def __init__(self, t):
            self.t, self.shape, self.device = t, t.shape, torch.device("cuda", 0)
    timed = []
    times = iter([3.0, 1.0, 2.0, 5.0, 4.0])
    capturing = [True]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "fake")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    monkeypatch.setattr("lab.core.timing.time_ms", lambda fn, device, repeats: timed.append(device) or next(times))
    monkeypatch.setattr(int8_module, "_TUNED", {})
    fa, fb = FakeCuda(a), FakeCuda(b)
    default = int8_module.block_sizes(300)
    assert int8_module.tuned_block(fa, fb, a_scale, b_scale, torch.float32) == default and not timed  # capture
    capturing[0] = False
    best = int8_module.tuned_block(fa, fb, a_scale, b_scale, torch.float32)
    assert best == int8_module.candidates(300)[1] and len(timed) == 5      # the fastest of the five
    capturing[0] = True                                                     # tuned before: kept in a graph
    assert int8_module.tuned_block(fa, fb, a_scale, b_scale, torch.float32) == best and len(timed) == 5


# Regression: the kernel reads the scale vectors with unit stride; strided views must still give the right result.
def test_int8_kernel_under_interpreter_non_contiguous_scales(interpreted):
    a, b, _, _ = random_int8(5, 24, 64, seed=6)
    a_scale = torch.rand(5, 2, generator=_gen(7))[:, 0]
    b_scale = torch.rand(24, 3, generator=_gen(8))[:, 1]
    try:
        y = interpreted.int8_matmul_triton(a, b, a_scale, b_scale, torch.float32)
    except ValueError as e:
        assert "a_scale" in str(e)
        return
    _assert_close(y, integer_reference(a, b, a_scale, b_scale), torch.float32)


# --- CUDA: the compiled kernel against the integer product -----------------------------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(NO_CUDA, reason="the compiled Triton kernels need a CUDA GPU")
@pytest.mark.parametrize("M", CUDA_INT8.batches)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_cuda_int8_kernel_matches_the_integer_product(M, out_dtype):
    (N, K), = CUDA_INT8.weights
    a, b, a_scale, b_scale = random_int8(M, N, K, seed=M)
    y = int8_module.int8_matmul(a.cuda(), b.cuda(), a_scale.cuda(), b_scale.cuda(), out_dtype)
    assert y.is_cuda and y.dtype == out_dtype
    _assert_close(y.cpu(), integer_reference(a, b, a_scale, b_scale), out_dtype)
    unit = int8_module.int8_matmul(a.cuda(), b.cuda(), torch.ones(M).cuda(), torch.ones(N).cuda(), torch.float32)
    assert torch.equal(unit.cpu().long(), a.long() @ b.long().T)
