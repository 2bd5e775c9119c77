"""lab.quant.packing, lab.kernels.int4_matmul, lab.kernels.int8_matmul and lab.quant.linear against
independent references.

References: the codes themselves (exact pack/unpack round trip), hand-packed bytes and a per-element
decoding of the documented layout, float64 matmuls with the dequantized weight, the exact integer
product (int64) for int8, `torch.fake_quantize_per_channel_affine` / `…_per_tensor_affine` for the
W8A8 layer, and the fake-quantized float model for the swapped-in modules. The Triton kernels run on
the CPU under TRITON_INTERPRET=1; the CUDA tests compare them on a GPU when there is one.

The kernels allocate their own outputs (no ``out=`` argument), so "poisoned outputs" are made by
replacing ``torch.empty`` inside the kernel module with an allocator that fills NaN: every element the
kernel owns must then be written.
"""

from __future__ import annotations

import copy
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lab.quant  # noqa: F401  (imported before lab.kernels.int4_matmul: see test_int4_kernel_module_imports_on_its_own)
from lab.core import runtime
from lab.kernels import int4_matmul as int4_module
from lab.kernels import int8_matmul as int8_module
from lab.models import GPT
from lab.quant import (
    Int4Linear,
    W8A8Linear,
    dequantize,
    gptq_quantize,
    int4_model,
    pack_int4,
    pack_quantized_weight,
    quantize,
    quantize_model,
    rtn_quantize,
    unpack_int4,
    w8a8_quantize_model,
)
from lab.quant.linear import decoder_linear_names
from tests.tiny_models import tiny_gpt as make_tiny_gpt

NO_CUDA = not torch.cuda.is_available()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_int4(N: int, K: int, group_size: int, seed: int, scale_dtype: torch.dtype = torch.float32):
    """Random codes q (N, K) in [0, 15], scales (K/g, N) > 0 and integer zeros (K/g, N) in [0, 15]."""
    g = _gen(seed)
    q = torch.randint(0, 16, (N, K), generator=g)
    q[0, :4] = torch.tensor([0, 15, 0, 15])                        # both extremes occur
    scales = (torch.rand(K // group_size, N, generator=g) * 0.1 + 0.01).to(scale_dtype)
    zeros = torch.randint(0, 16, (K // group_size, N), generator=g).to(scale_dtype)
    return q, scales, zeros


def dequantized_weight(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """Ŵ[n, k] = s[k // g, n] · (q[n, k] − z[k // g, n]) in float64, element by element from the codes."""
    group = torch.arange(q.shape[1]) // group_size
    return (q.double() - zeros.double()[group, :].T) * scales.double()[group, :].T


class _PoisonedTorch:
    """``torch`` for a kernel module, except that ``empty`` returns tensors filled with NaN."""

    def __init__(self) -> None:
        self.empty_calls = 0

    def __getattr__(self, name: str):
        return getattr(torch, name)

    def empty(self, *args, **kwargs) -> torch.Tensor:
        self.empty_calls += 1
        return torch.full(torch.Size(args[0] if len(args) == 1 and not isinstance(args[0], int) else args),
                          float("nan"), **kwargs)


# ---------------------------------------------------------------------------------------------
# packing
# ---------------------------------------------------------------------------------------------

def test_int4_kernel_module_imports_on_its_own():
    """Regression: the kernel module imports on its own (lab.quant imports it, so it must not import lab.quant
    at module level)."""
    result = subprocess.run([sys.executable, "-c", "import lab.kernels.int4_matmul"], capture_output=True, text=True,
                            check=False, cwd=Path(__file__).resolve().parents[2])     # lab is pip-installed (-e)
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1]


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


@pytest.mark.parametrize("granularity, group_size", [("group", 32), ("group", 16), ("channel", None)])
def test_pack_quantized_weight(granularity, group_size):
    W = torch.randn(24, 64, generator=_gen(2))
    qt = quantize(W, 4, granularity=granularity, group_size=group_size or 1)
    packed, scales, zeros, g = pack_quantized_weight(qt)
    g_expected = group_size or 64
    assert g == g_expected and packed.shape == (32, 24) and scales.shape == zeros.shape == (64 // g, 24)
    assert torch.equal(unpack_int4(packed, g).long(), qt.qdata.long())
    assert scales.dtype == zeros.dtype == torch.float32
    torch.testing.assert_close(dequantized_weight(unpack_int4(packed, g), scales, zeros, g), dequantize(qt).double(),
                               rtol=0, atol=1e-6)


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
    (lambda: pack_quantized_weight(torch.ones(2, 2)), TypeError, r"qt must be a QuantizedTensor"),
    (lambda: pack_quantized_weight(quantize(torch.randn(4, 32), 8, granularity="channel")), ValueError,
     r"4-bit, asymmetric.*bits=8"),
    (lambda: pack_quantized_weight(quantize(torch.randn(4, 32), 4, True, "channel")), ValueError, r"qmin=-8"),
    (lambda: pack_quantized_weight(quantize(torch.randn(4, 32), 4, granularity="channel", axis=1)), ValueError,
     r"axis=1"),
    (lambda: pack_quantized_weight(quantize(torch.randn(4, 32), 4)), ValueError, r"granularity='tensor'"),
])
def test_packing_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------------------------------------
# int4 weight-only matmul: PyTorch path
# ---------------------------------------------------------------------------------------------

def _tol(dtype: torch.dtype) -> float:
    return {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]


def _assert_close(y: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    tol = _tol(dtype)
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M, N, K, group_size", [(1, 24, 64, 32), (7, 40, 128, 64), (3, 16, 96, 96)])
def test_int4_torch_path_matches_float64(M, N, K, group_size, dtype, scale_dtype, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, scales, zeros = random_int4(N, K, group_size, seed=M + N + K, scale_dtype=scale_dtype)
    x = torch.randn(M, K, generator=_gen(M * K)).to(dtype)
    packed = pack_int4(q, group_size)
    y = int4_module.int4_weight_only_matmul(x, packed, scales, zeros, group_size)
    assert y.dtype == dtype and y.shape == (M, N)
    assert torch.equal(y, int4_module.int4_weight_only_matmul_torch(x, packed, scales, zeros, group_size))
    _assert_close(y, x.double() @ dequantized_weight(q, scales, zeros, group_size).T, dtype)


X4 = torch.randn(3, 64)
Q4, S4, Z4 = random_int4(24, 64, 32, seed=3)
P4 = pack_int4(Q4, 32)


@pytest.mark.parametrize("call, error, match", [
    (lambda f: f(X4.to(torch.int32), P4, S4, Z4, 32), TypeError, r"x must be a 2-D tensor of dtype in"),
    (lambda f: f(X4.double(), P4, S4, Z4, 32), TypeError, r"x must be .* got torch\.float64"),
    (lambda f: f(X4[None], P4, S4, Z4, 32), TypeError, r"x must be a 2-D tensor"),
    (lambda f: f(X4, P4.to(torch.int8), S4, Z4, 32), TypeError, r"packed must be a 2-D uint8 tensor \(K/2, N\)"),
    (lambda f: f(X4, P4.T.contiguous().T, S4, Z4, 32), ValueError, r"packed must be contiguous"),
    (lambda f: f(X4, P4[:16], S4[:1], Z4[:1], 32), ValueError, r"packed has 16 rows; it must have K/2 = 32 rows"),
    (lambda f: f(torch.randn(3, 128), P4, S4, Z4, 32), ValueError, r"packed has 32 rows; .*K/2 = 64"),
    (lambda f: f(X4, P4, torch.ones(4, 24), torch.ones(4, 24), 16), ValueError,
     r"group_size=16 must be a multiple of 32 dividing K=64"),
    (lambda f: f(X4, P4, S4, Z4, 48), ValueError, r"group_size=48 must be a multiple of 32"),
    (lambda f: f(torch.randn(3, 128), pack_int4(torch.zeros(24, 128, dtype=torch.int64), 2), torch.ones(1, 24),
                 torch.ones(1, 24), 96), ValueError, r"group_size=96 must be a multiple of 32 dividing K=128"),
    (lambda f: f(X4, P4, S4[:1], Z4, 32), TypeError, r"scales must be a float tensor of shape \(2, 24\)"),
    (lambda f: f(X4, P4, S4, Z4.to(torch.int32), 32), TypeError, r"zeros must be a float tensor"),
    (lambda f: f(X4, P4, S4, Z4.T.contiguous().T, 32), ValueError, r"scales and zeros must have the same strides"),
])
@pytest.mark.parametrize("path", ["torch", "triton"])
def test_int4_bad_input(call, error, match, path):
    f = getattr(int4_module, f"int4_weight_only_matmul_{path}")
    with pytest.raises(error, match=match):
        call(f)


def test_int4_triton_rejects_block_k_not_dividing_the_half_group():
    with pytest.raises(ValueError, match=r"BLOCK_K=32 must divide group_size/2 = 16"):
        int4_module.int4_weight_only_matmul_triton(X4, P4, S4, Z4, 32, block=(16, 64, 32, 1, 4))


# ---------------------------------------------------------------------------------------------
# int8 matmul: PyTorch path
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# The Triton kernels under the interpreter
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def interpreted():
    """Both kernel modules re-imported under TRITON_INTERPRET=1 (and restored afterwards)."""
    with runtime.triton_interpret():
        yield importlib.reload(int4_module), importlib.reload(int8_module)
    importlib.reload(int4_module)
    importlib.reload(int8_module)


def _check_int4(module, M: int, N: int, K: int, group_size: int, dtype: torch.dtype, seed: int, block=None,
                transpose_x: bool = False, scale_dtype: torch.dtype = torch.float32, monkeypatch=None) -> None:
    q, scales, zeros = random_int4(N, K, group_size, seed, scale_dtype)
    g = _gen(seed + 1)
    x = torch.randn(K, M, generator=g).to(dtype).t() if transpose_x else torch.randn(M, K, generator=g).to(dtype)
    poisoned = _PoisonedTorch()
    monkeypatch.setattr(module, "torch", poisoned)
    y = module.int4_weight_only_matmul_triton(x, pack_int4(q, group_size), scales, zeros, group_size, block=block)
    split_k = (block or module.block_sizes(M, N, K, group_size, dtype))[3]
    assert poisoned.empty_calls == (split_k == 1)      # a NaN-filled output buffer when the kernel stores
    assert y.dtype == dtype and y.shape == (M, N) and not y.isnan().any()
    _assert_close(y, x.double() @ dequantized_weight(q, scales, zeros, group_size).T, dtype)


# bf16 is left out here: triton 3.9's interpreter computes tl.dot on bf16 inputs wrongly (it reads
# the raw 16-bit patterns); bf16 is covered by the PyTorch path above and by the CUDA tests below.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("M", [1, 3, 16, 17])
@pytest.mark.parametrize("N, K, group_size", [(16, 64, 32), (40, 128, 32), (24, 128, 64), (8, 64, 64)])
def test_int4_kernel_under_interpreter_matches_float64(interpreted, M, N, K, group_size, dtype, monkeypatch):
    assert os.environ.get("TRITON_INTERPRET") == "1"
    _check_int4(interpreted[0], M, N, K, group_size, dtype, seed=M * 1000 + N + K + group_size,
                monkeypatch=monkeypatch)


@pytest.mark.parametrize("M, N, K, group_size, block", [
    (5, 33, 128, 64, (16, 32, 16, 3, 4)),     # SPLIT_K = 3 over 4 steps (uneven), partial N tile
    (20, 70, 128, 32, (16, 32, 16, 2, 4)),    # 2 x 3 tiles, both partial, SPLIT_K = 2
    (20, 70, 64, 32, (16, 32, 16, 1, 4)),     # the same tiles stored directly (SPLIT_K = 1)
    (2, 16, 256, 128, (16, 16, 64, 4, 4)),    # BLOCK_K = g/2, SPLIT_K = steps = 4
    (40, 48, 64, 32, None),                   # default blocks for 16 < M <= 128
])
@pytest.mark.parametrize("transpose_x", [False, True])
def test_int4_kernel_under_interpreter_split_k_and_partial_tiles(interpreted, M, N, K, group_size, block,
                                                                  transpose_x, monkeypatch):
    _check_int4(interpreted[0], M, N, K, group_size, torch.float32, seed=M + N + K, block=block,
                transpose_x=transpose_x, monkeypatch=monkeypatch)


@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16])
def test_int4_kernel_under_interpreter_low_precision_scales(interpreted, scale_dtype, monkeypatch):
    _check_int4(interpreted[0], 3, 24, 64, 32, torch.float32, seed=5, scale_dtype=scale_dtype, monkeypatch=monkeypatch)


def test_int4_dispatch_under_interpreter_uses_the_kernel(interpreted, monkeypatch):
    calls = []
    monkeypatch.setattr(interpreted[0], "int4_weight_only_matmul_triton",
                        lambda *args: calls.append(args) or torch.zeros(1))
    interpreted[0].int4_weight_only_matmul(X4, P4, S4, Z4, 32)
    assert len(calls) == 1


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
    _check_int8(interpreted[1], M, N, K, out_dtype, seed=M + N + K, monkeypatch=monkeypatch)


@pytest.mark.parametrize("M, N, K, block", [(5, 70, 100, (16, 32, 32, 1, 4, 3)),     # K not a multiple of BLOCK_K
                                            (20, 33, 64, (16, 16, 16, 1, 4, 3)),      # 2 x 3 partial tiles
                                            (7, 9, 300, (16, 16, 128, 1, 4, 3)),
                                            (70, 40, 64, (16, 16, 32, 2, 4, 3)),      # grouped: 5 x 3 tiles,
                                            (70, 40, 64, (16, 16, 32, 4, 4, 3)),      # a last group of 1
                                            (70, 40, 64, (16, 16, 32, 8, 4, 3))])     # one short group
@pytest.mark.parametrize("transpose", [False, True])
def test_int8_kernel_under_interpreter_partial_tiles(interpreted, M, N, K, block, transpose, monkeypatch):
    _check_int8(interpreted[1], M, N, K, torch.float32, seed=M * N + K, block=block, transpose=transpose,
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
        y = interpreted[1].int8_matmul_triton(a, b, a_scale, b_scale, torch.float32)
    except ValueError as e:
        assert "a_scale" in str(e)
        return
    _assert_close(y, integer_reference(a, b, a_scale, b_scale), torch.float32)


# ---------------------------------------------------------------------------------------------
# quantized linear layers and whole models
# ---------------------------------------------------------------------------------------------

def _linear(in_features: int, out_features: int, bias: bool, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(in_features, out_features, bias=bias)


@pytest.mark.parametrize("group_size", [32, None])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_linear_matches_the_dequantized_float_layer(group_size, bias, dtype, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    lin = _linear(64, 40, bias, seed=9)
    qt = rtn_quantize(lin.weight, 4, group_size)
    layer = Int4Linear(qt, lin.bias)
    assert layer.packed.shape == (32, 40) and layer.group_size == (group_size or 64)
    x = torch.randn(2, 3, 64, generator=_gen(10)).to(dtype)
    y = layer(x)
    ref = x.double() @ dequantize(qt).double().T + (lin.bias.double() if bias else 0.0)
    assert y.shape == (2, 3, 40) and y.dtype == dtype
    _assert_close(y, ref, dtype)


def test_int4_linear_from_gptq_and_with_half_scales(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    W = torch.randn(24, 64, generator=_gen(11))
    X = torch.randn(64, 300, generator=_gen(12), dtype=torch.float64)
    qt = gptq_quantize(W, 2 * X @ X.T / 300, 4, 32)
    layer = Int4Linear(qt, scale_dtype=torch.float16)
    assert layer.scales.dtype == layer.zeros.dtype == torch.float16
    x = torch.randn(5, 64, generator=_gen(13))
    scales = qt.scale.half().double().repeat_interleave(32, 1)            # the fp16-rounded scales
    W_hat = (qt.qdata.double() - qt.zero_point.double().repeat_interleave(32, 1)) * scales
    _assert_close(layer(x), x.double() @ W_hat.T, torch.float32)


def test_int4_linear_under_interpreter(interpreted):
    """lab.quant.linear calls the kernel module's dispatcher, which now runs the interpreted kernel."""
    lin = _linear(64, 24, True, seed=14)
    qt = rtn_quantize(lin.weight, 4, 32)
    x = torch.randn(3, 64, generator=_gen(15))
    ref = x.double() @ dequantize(qt).double().T + lin.bias.double()
    _assert_close(Int4Linear(qt, lin.bias)(x), ref, torch.float32)


def test_int4_linear_rejects_other_grids():
    W = torch.randn(8, 64)
    with pytest.raises(ValueError, match=r"bits=3"):
        Int4Linear(rtn_quantize(W, 3, 32))
    with pytest.raises(ValueError, match=r"qmin=-8"):
        Int4Linear(rtn_quantize(W, 4, 32, symmetric=True))


def _w8a8_reference(x: torch.Tensor, W: torch.Tensor, act_scale: torch.Tensor | None = None,
                    act_bits: int = 8) -> torch.Tensor:
    """Symmetric int8 fake quantization with PyTorch: W per output channel (s_n = max|W_n|/127), x per token
    (s_m = max|x_m|/qmax) or per tensor with ``act_scale``; then x̂ Ŵᵀ in float64."""
    w_scale = W.abs().amax(1) / 127
    W_hat = torch.fake_quantize_per_channel_affine(W, w_scale, torch.zeros(W.shape[0], dtype=torch.int32), 0, -128, 127)
    qmin, qmax = -(2 ** (act_bits - 1)), 2 ** (act_bits - 1) - 1
    if act_scale is None:
        x_scale = x.abs().amax(1) / qmax
        x_hat = torch.fake_quantize_per_channel_affine(x, x_scale, torch.zeros(x.shape[0], dtype=torch.int32), 0,
                                                       qmin, qmax)
    else:
        x_hat = torch.fake_quantize_per_tensor_affine(x, act_scale, torch.tensor(0, dtype=torch.int32), qmin, qmax)
    return x_hat.double() @ W_hat.double().T


@pytest.mark.parametrize("act_bits", [8, 6])
@pytest.mark.parametrize("bias", [False, True])
def test_w8a8_linear_per_token_matches_torch_fake_quant(act_bits, bias, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    lin = _linear(48, 20, bias, seed=16)
    layer = W8A8Linear(lin, act_bits=act_bits)
    assert layer.w_q.dtype == torch.int8 and layer.w_scale.shape == (20,)
    x = torch.randn(2, 5, 48, generator=_gen(17))
    x[0, 1, 3] = 30.0                                          # an outlier token
    y = layer(x)
    ref = _w8a8_reference(x.reshape(-1, 48), lin.weight.detach(), act_bits=act_bits).reshape(2, 5, 20)
    ref = ref + (lin.bias.double() if bias else 0.0)
    assert y.shape == (2, 5, 20) and y.dtype == torch.float32
    _assert_close(y, ref, torch.float32)
    float_ref = lin(x).double()
    assert (y.double() - float_ref).norm() / float_ref.norm() < (0.02 if act_bits == 8 else 0.1)


def test_w8a8_linear_static_tensor_scale_clips_like_torch(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    lin = _linear(32, 12, False, seed=18)
    act_scale = torch.tensor(0.01)                            # range ±1.27: large inputs are clipped
    layer = W8A8Linear(lin, act="tensor", act_scale=act_scale)
    x = torch.randn(7, 32, generator=_gen(19))
    _assert_close(layer(x), _w8a8_reference(x, lin.weight.detach(), act_scale), torch.float32)


def test_w8a8_linear_with_smoothing_factors(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    lin = _linear(32, 12, True, seed=20)
    s = torch.exp(torch.randn(32, generator=_gen(21)))
    x = torch.randn(6, 32, generator=_gen(22))
    ref = _w8a8_reference(x / s, lin.weight.detach() * s[None, :]) + lin.bias.double()
    _assert_close(W8A8Linear(lin, smooth=s)(x), ref, torch.float32)


@pytest.mark.parametrize("kwargs, match", [
    ({"act": "channel"}, r"act='channel' is not allowed; use one of \('token', 'tensor'\)"),
    ({"act": "tensor"}, r"act='tensor' needs a static act_scale"),
    ({"act_scale": torch.tensor(0.1)}, r"act='tensor' needs a static act_scale"),
    ({"act_bits": 9}, r"bits=9"),
    ({"smooth": torch.ones(31)}, r"smooth must hold 32 positive factors"),
    ({"smooth": -torch.ones(32)}, r"smooth must hold 32 positive factors"),
])
def test_w8a8_linear_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        W8A8Linear(_linear(32, 8, False, seed=0), **kwargs)


def tiny_gpt(seed: int = 0) -> GPT:
    return make_tiny_gpt(seed, d_model=64, d_ff=96)


TOKENS = torch.randint(0, 61, (3, 16), generator=_gen(23))


@pytest.mark.parametrize("group_size", [32, None])
@torch.no_grad()
def test_int4_model_matches_the_fake_quantized_model(group_size, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = tiny_gpt()
    report = quantize_model(model, "rtn", 4, group_size, progress=False)
    ref = model(TOKENS)
    int4 = int4_model(copy.deepcopy(model), report)
    assert all(isinstance(int4.get_submodule(n), Int4Linear) for n in decoder_linear_names(int4))
    torch.testing.assert_close(int4(TOKENS), ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"report has no quantized weight for \['layers\.0\.attn\.q_proj'"):
        int4_model(tiny_gpt(), {})


@torch.no_grad()
def test_w8a8_quantize_model_per_token_and_static(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = tiny_gpt(seed=1)
    ref = model(TOKENS)
    inputs, handles = {}, []
    for name in decoder_linear_names(model):
        handles.append(model.get_submodule(name).register_forward_hook(
            lambda m, args, out, name=name: inputs.__setitem__(name, args[0])))
    model(TOKENS)
    for h in handles:
        h.remove()
    dynamic = w8a8_quantize_model(copy.deepcopy(model))
    assert all(isinstance(dynamic.get_submodule(n), W8A8Linear) for n in decoder_linear_names(model))
    assert isinstance(dynamic.lm_head, torch.nn.Linear) and not isinstance(dynamic.lm_head, W8A8Linear)
    static = copy.deepcopy(model)
    w8a8_quantize_model(static, act="tensor", calib_forward=lambda: static(TOKENS))
    for name in decoder_linear_names(model):
        layer = static.get_submodule(name)
        assert layer.act == "tensor"
        torch.testing.assert_close(layer.act_scale, inputs[name].abs().max() / 127, rtol=1e-6, atol=0)
    for quantized in (dynamic, static):
        out = quantized(TOKENS)
        assert (out - ref).norm() / ref.norm() < 0.02
    with pytest.raises(ValueError, match=r"act='tensor' needs calib_forward"):
        w8a8_quantize_model(tiny_gpt(), act="tensor")
    with pytest.raises(ValueError, match=r"act='row' is not allowed; use one of"):
        w8a8_quantize_model(tiny_gpt(), act="row")
    with pytest.raises(ValueError, match=r"model has no submodule 'layers\.5\.attn\.q_proj'"):
        w8a8_quantize_model(tiny_gpt(), names=["layers.5.attn.q_proj"])
    with pytest.raises(ValueError, match=r"'layers\.0\.attn_norm' is a RMSNorm, not an nn\.Linear"):
        w8a8_quantize_model(tiny_gpt(), names=["layers.0.attn_norm"])


# ---------------------------------------------------------------------------------------------
# CUDA: the compiled Triton kernels against PyTorch references
# ---------------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(NO_CUDA, reason="the compiled Triton kernels need a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [1, 7, 16, 64, 300])
@pytest.mark.parametrize("group_size", [128, 64])
def test_cuda_int4_kernel_matches_torch_references(M, group_size, dtype):
    N, K = 1024, 2048
    q, scales, zeros = random_int4(N, K, group_size, seed=M + group_size, scale_dtype=dtype)
    x = torch.randn(M, K, generator=_gen(M)).to(dtype)
    packed = pack_int4(q, group_size)
    y = int4_module.int4_weight_only_matmul(x.cuda(), packed.cuda(), scales.cuda(), zeros.cuda(), group_size)
    assert y.is_cuda and y.dtype == dtype and y.shape == (M, N)
    ref = x.double() @ dequantized_weight(q, scales, zeros, group_size).T
    _assert_close(y.cpu(), ref, dtype)
    torch_path = int4_module.int4_weight_only_matmul_torch(x.cuda(), packed.cuda(), scales.cuda(), zeros.cuda(),
                                                           group_size)
    _assert_close(y.cpu(), torch_path.cpu().double(), dtype)


@pytest.mark.cuda
@pytest.mark.skipif(NO_CUDA, reason="the compiled Triton kernels need a CUDA GPU")
@pytest.mark.parametrize("M", [1, 16, 100, 256])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_cuda_int8_kernel_matches_the_integer_product(M, out_dtype):
    N, K = 512, 1024
    a, b, a_scale, b_scale = random_int8(M, N, K, seed=M)
    y = int8_module.int8_matmul(a.cuda(), b.cuda(), a_scale.cuda(), b_scale.cuda(), out_dtype)
    assert y.is_cuda and y.dtype == out_dtype
    _assert_close(y.cpu(), integer_reference(a, b, a_scale, b_scale), out_dtype)
    unit = int8_module.int8_matmul(a.cuda(), b.cuda(), torch.ones(M).cuda(), torch.ones(N).cuda(), torch.float32)
    assert torch.equal(unit.cpu().long(), a.long() @ b.long().T)


@pytest.mark.cuda
@pytest.mark.skipif(NO_CUDA, reason="the compiled Triton kernels need a CUDA GPU")
@torch.no_grad()
def test_cuda_quantized_models_match_the_cpu_path():
    model = tiny_gpt()
    report = quantize_model(model, "rtn", 4, 32, progress=False)
    cpu_int4 = int4_model(copy.deepcopy(model), report)
    gpu_int4 = int4_model(copy.deepcopy(model), report).cuda()
    torch.testing.assert_close(gpu_int4(TOKENS.cuda()).cpu(), cpu_int4(TOKENS), rtol=1e-2, atol=1e-2)
    cpu_w8a8 = w8a8_quantize_model(copy.deepcopy(model))
    gpu_w8a8 = w8a8_quantize_model(copy.deepcopy(model).cuda())
    ref = cpu_w8a8(TOKENS)
    torch.testing.assert_close(gpu_w8a8(TOKENS.cuda()).float().cpu(), ref.float(), rtol=2e-2,
                               atol=2e-2 * ref.abs().max().item())
