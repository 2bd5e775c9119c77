"""lab.kernels.fp4_gemv (the FP4 GEMV, MXFP4 and NVFP4) against Ŵ dequantized element by element from the spec.

The reference is written here from the layout's definition, not taken from `lab.formats.fp4`: E2M1's
v(c) = (−1)^s · 2^(e − 1) · (1 + m/2) (e > 0) or (−1)^s · m/2 from the code's bit fields, S = 2^(byte − 127)
(E8M0, 255 NaN) or the E4M3 number of the byte from its bit fields (0x7F, 0xFF NaN), Ŵ = v · S · s_g in float64.

The Triton kernel runs on the CPU under TRITON_INTERPRET=1 into NaN-poisoned outputs. Exactness: the data make
every sum exact in fp32. x = i/4 with |i| ≤ min(4, 2048/K) (so K · max|x| ≤ 512), v a multiple of 1/2 with
|v| ≤ 6, S an E8M0 power of two in [2^−3, 2^2] or an E4M3 number with exponent in [−3, 2] (a multiple of
2^−6, at most 7.5), s_g a power of two: every partial sum, in any order, is a multiple of 2^−9 below
512 · 6 · 7.5 < 2^15, at most 24 significant bits. So the kernel's fp32 sum is the float64 reference itself,
whatever its order: fp32 and fp16 outputs equal the reference rounded once, bit for bit; bf16 outputs equal it
truncated, bit for bit (the interpreter truncates fp32 → bf16 where torch and a GPU round to nearest). With
one-hot rows of x the output is Ŵ itself, v · S (exact) times s_g (1, or 0.375: 2 significant bits, still
exact): every code with every scale byte, NaN, ±inf and subnormal S included, is checked bit for bit. The
CUDA test compares the compiled kernel, rounding to nearest, on data of the same kind.
"""

from __future__ import annotations

import pytest
import torch

from lab.bench.static import CUDA_TEST_SHAPES
from lab.formats.fp4 import pack_fp4
from lab.kernels import fp4_gemv as fp4_module
from lab.kernels import int4 as int4_module
from tests.kernels.interpreted import reloaded
from tests.kernels.test_int4 import NO_CUDA, _PoisonedTorch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CUDA_FP4, = CUDA_TEST_SHAPES["test_cuda_fp4_kernel_matches_the_reference"]


def e2m1(q: torch.Tensor) -> torch.Tensor:
    """v(c) in float64 from the code's sign, exponent and mantissa bits."""
    s, e, m = q >> 3, (q >> 1) & 3, (q & 1).double()
    magnitude = torch.where(e > 0, 2.0 ** (e.double() - 1) * (1 + m / 2), m / 2)
    return torch.where(s == 1, -magnitude, magnitude)


def scale_value(codes: torch.Tensor, fmt: str) -> torch.Tensor:
    """S in float64: E8M0 2^(byte − 127), or E4M3 (sign, 4 exponent bits of bias 7, 3 mantissa bits; S.1111.111
    is NaN)."""
    c = codes.long()
    if fmt == "mxfp4":
        return torch.where(c == 255, torch.nan, 2.0 ** (c.double() - 127))
    s, e, m = c >> 7, (c >> 3) & 15, (c & 7).double()
    magnitude = torch.where(e > 0, 2.0 ** (e.double() - 7) * (1 + m / 8), 2.0 ** -6 * m / 8)
    value = torch.where(s == 1, -magnitude, magnitude)
    return torch.where((c & 0x7F) == 0x7F, torch.nan, value)


def reference_weight(q: torch.Tensor, scales: torch.Tensor, global_scale: float, fmt: str) -> torch.Tensor:
    """Ŵ[n, k] = v(q[n, k]) · S[n, k // B] · s_g, element by element, float64 (N, K)."""
    B = fp4_module.FORMATS[fmt][0]
    return e2m1(q.long()) * scale_value(scales, fmt).repeat_interleave(B, dim=1) * global_scale


def exact_case(M: int, N: int, K: int, fmt: str, seed: int):
    """Codes q (N, K), scale bytes (N, K/B) and x (M, K) float64 whose sums are exact in fp32 (module docstring)."""
    g = torch.Generator().manual_seed(seed)
    B = fp4_module.FORMATS[fmt][0]
    q = torch.randint(0, 16, (N, K), generator=g, dtype=torch.uint8)
    if fmt == "mxfp4":                                             # 2^−3 … 2^2
        scales = torch.randint(124, 130, (N, K // B), generator=g, dtype=torch.uint8)
    else:                                                          # exponent fields 4 … 9, any mantissa
        scales = torch.randint(4 << 3, 10 << 3, (N, K // B), generator=g, dtype=torch.uint8)
    most = min(4, 2048 // K)
    x = torch.randint(-most, most + 1, (M, K), generator=g).double() / 4
    return q, scales, x


def expected(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, global_scale: float, fmt: str,
             dtype: torch.dtype) -> torch.Tensor:
    """x Ŵᵀ in float64 (exact here) cast to ``dtype``: rounded, or truncated for bf16 (the interpreter's cast)."""
    y = x @ reference_weight(q, scales, global_scale, fmt).T
    if dtype != torch.bfloat16:
        return y.to(dtype)
    return (y.float().view(torch.int32) & -65536).view(torch.float32).to(dtype)


@pytest.fixture(scope="module")
def interpreted():
    for _, module in reloaded(int4_module, fp4_module):
        yield module


def _run(module, monkeypatch, x, q, scales, global_scale, fmt, block=None) -> tuple[torch.Tensor, int]:
    """The kernel's output into NaN-poisoned buffers, and the number of buffers it allocated."""
    poisoned = _PoisonedTorch()
    monkeypatch.setattr(module, "torch", poisoned)
    y = module.fp4_matmul_triton(x, pack_fp4(q), scales, global_scale, fmt, block)
    return y, poisoned.empty_calls


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M, N, K, split_k", [(1, 37, 64, 1), (3, 67, 160, 2)])      # N odd: a partial tile
def test_the_kernel_equals_the_reference(interpreted, monkeypatch, M, N, K, split_k, fmt, dtype):
    """Steps of 1, 2 and 4 blocks (BLOCKS = gcd(K/B, 64/B)); SPLIT_K = 1 writes y, 2 adds int4's reduction."""
    q, scales, x = exact_case(M, N, K, fmt, seed=N + K)
    y, buffers = _run(interpreted, monkeypatch, x.to(dtype), q, scales, 0.5, fmt)
    assert interpreted.block_sizes(M, N, K, fmt, dtype)[1] == split_k and buffers == split_k
    assert y.shape == (M, N) and y.dtype == dtype and torch.equal(y, expected(x, q, scales, 0.5, fmt, dtype))


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_an_uneven_split_over_several_tiles(interpreted, monkeypatch, fmt):
    """SPLIT_K = 3 over 4 steps (one program runs 2) and 3 tiles of 16 rows, the last one partial."""
    q, scales, x = exact_case(2, 37, 256, fmt, seed=7)
    y, buffers = _run(interpreted, monkeypatch, x.half(), q, scales, 2.0, fmt, block=(16, 3, 4))
    assert buffers == 2 and torch.equal(y, expected(x, q, scales, 2.0, fmt, torch.float16))


@pytest.mark.filterwarnings("ignore:overflow encountered")          # 6 · 2^127 · s_g: ±inf, as in the reference
@pytest.mark.parametrize("fmt, global_scale", [("mxfp4", 1.0), ("nvfp4", 0.375)])
def test_every_code_with_every_scale_byte(interpreted, monkeypatch, fmt, global_scale):
    """Row n holds the 16 codes under scale byte n (256 rows); one-hot rows of x read Ŵ back column by column."""
    B = fp4_module.FORMATS[fmt][0]
    q = torch.arange(B, dtype=torch.uint8).remainder(16).repeat(256, 1)
    scales = torch.arange(256, dtype=torch.uint8)[:, None]
    x = torch.eye(16, B)
    y, _ = _run(interpreted, monkeypatch, x, q, scales, global_scale, fmt)
    w_hat = reference_weight(q, scales, global_scale, fmt).float()[:, :16].T
    assert w_hat.isnan().any() and (w_hat == 0).any()
    torch.testing.assert_close(y, w_hat, rtol=0, atol=0, equal_nan=True)


def test_the_cpu_path_equals_the_reference(monkeypatch):
    """Without the interpreter the dispatcher dequantizes and multiplies in fp32, for any M (here 20 > MAX_M)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for fmt in ("mxfp4", "nvfp4"):
        q, scales, x = exact_case(20, 24, 96, fmt, seed=3)
        for dtype in DTYPES:
            y = fp4_module.fp4_matmul(x.to(dtype), pack_fp4(q), scales, 0.25, fmt)
            assert torch.equal(y, (x @ reference_weight(q, scales, 0.25, fmt).T).to(dtype))


def test_call_bytes():
    # codes N·K/2, scales N·K/B, x and y in bf16; with S = 4 the fp32 partials, written and read: 8·S·M·N
    N = K = 8192
    assert fp4_module.call_bytes(N, K, 1, "mxfp4", 2, 1) == N * K // 2 + N * K // 32 + 2 * K + 2 * N
    assert fp4_module.call_bytes(N, K, 1, "nvfp4", 2, 4) == N * K // 2 + N * K // 16 + 2 * K + 2 * N + 8 * 4 * N
    split_k = fp4_module.block_sizes(1, N, K, "mxfp4")[1]
    assert fp4_module.call_bytes(N, K, 1, "mxfp4", 2) == fp4_module.call_bytes(N, K, 1, "mxfp4", 2, split_k)


@pytest.mark.cuda
@pytest.mark.skipif(NO_CUDA, reason="the compiled Triton kernel needs a CUDA GPU")
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_cuda_fp4_kernel_matches_the_reference(fmt):
    """The shapes `lab.bench.static` declares for this test (the sm_90 compile covers them); the exact data of
    the interpreted tests, rounded to nearest in every dtype."""
    (N, K), = CUDA_FP4.weights
    for M in CUDA_FP4.batches:
        q, scales, x = exact_case(M, N, K, fmt, seed=M)
        for dtype in DTYPES:
            y = fp4_module.fp4_matmul(x.to(dtype).cuda(), pack_fp4(q).cuda(), scales.cuda(), 0.5, fmt)
            ref = (x @ reference_weight(q, scales, 0.5, fmt).T).to(dtype)
            assert torch.equal(y.cpu(), ref), (M, dtype)
