"""lab.kernels.int4 (v1, the weight-only int4 matmul, and v2, the decode GEMV) against independent references.

References: float64 matmuls with the dequantized weight (element by element from the codes), v1 on the
same weight for v2, and v2's inline PTX emulated on the CPU (its LOP3, bit by bit). The Triton kernels
run on the CPU under TRITON_INTERPRET=1 (fp32 and fp16: the interpreter computes bf16 tl.dot wrongly)
with NaN-poisoned outputs; the CUDA tests compare the compiled kernels on a GPU when there is one.

The kernels allocate their own outputs (no ``out=`` argument), so "poisoned outputs" are made by
replacing ``torch.empty`` inside the kernel module with an allocator that fills NaN: every element the
kernel owns must then be written.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lab.bench.static import CUDA_TEST_SHAPES
from lab.formats.int4 import pack_int4, pack_int4_v2
from lab.kernels import int4 as int4_module
from tests.kernels.interpreted import reloaded

NO_CUDA = not torch.cuda.is_available()

CUDA_INT4 = CUDA_TEST_SHAPES["test_cuda_int4_kernel_matches_torch_references"]   # the sm_90 compile covers them


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


def _tol(dtype: torch.dtype) -> float:
    return {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]


def _assert_close(y: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    tol = _tol(dtype)
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())


# --- the module ------------------------------------------------------------------------------------------------

def test_int4_kernel_module_imports_on_its_own():
    """Regression: the kernel module imports on its own (it imports only lab.core and lab.formats; lab.quant
    imports it)."""
    result = subprocess.run([sys.executable, "-c", "import lab.kernels.int4"], capture_output=True, text=True,
                            check=False, cwd=Path(__file__).resolve().parents[2])     # lab is pip-installed (-e)
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1]


def test_call_bytes_follows_the_formula():
    M, N, K, g, e = 2, 64, 256, 128, 2
    base = N * K // 2 + 2 * (K // g) * N * e + e * M * K + e * M * N
    assert int4_module.call_bytes(M, N, K, g, e, "v1", 1) == int4_module.call_bytes(M, N, K, g, e, "v2", 1) == base
    assert int4_module.call_bytes(M, N, K, g, e, "v1", 3) == base + 4 * M * N + 8 * 3 * M * N + 4 * M * N
    assert int4_module.call_bytes(M, N, K, g, e, "v2", 3) == base + 8 * 3 * M * N
    with pytest.raises(ValueError, match=r"version='v3'"):
        int4_module.call_bytes(M, N, K, g, e, "v3", 1)


# --- v1: the PyTorch path --------------------------------------------------------------------------------------

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
    (lambda f: f(X4, P4[:16], S4[:1], Z4[:1], 32), ValueError, r"packed has 16 rows; it must have K/2 = 32 for x"),
    (lambda f: f(torch.randn(3, 128), P4, S4, Z4, 32), ValueError, r"packed has 32 rows; .*K/2 = 64"),
    (lambda f: f(X4, P4, torch.ones(4, 24), torch.ones(4, 24), 16), ValueError,
     r"group_size=16 must be a multiple of 32 dividing K=64"),
    (lambda f: f(X4, P4, S4, Z4, 48), ValueError, r"group_size=48 must be a multiple of 32"),
    (lambda f: f(torch.randn(3, 128), pack_int4(torch.zeros(24, 128, dtype=torch.int64), 2), torch.ones(1, 24),
                 torch.ones(1, 24), 96), ValueError, r"group_size=96 must be a multiple of 32 dividing K=128"),
    (lambda f: f(X4, P4, S4[:1], Z4, 32), ValueError, r"scales must have shape \(2, 24\) \(K/g, N\), got \(1, 24\)"),
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


@pytest.mark.parametrize("block, match", [
    ((16, 64, 16, 0, 4), "block SPLIT_K=0 is out of range"),              # would return uninitialised memory
    ((16, 48, 16, 1, 4), "block BLOCK_N=48 is not allowed; use a positive power of two"),
    ((16, 64, 16, 1, 3), "block num_warps=3 is not allowed"),
    ((16, 64, 16, 1.0, 4), "block SPLIT_K must be an int"),
])
def test_int4_triton_refuses_bad_tiles_by_name(block, match):
    with pytest.raises((ValueError, TypeError), match=match):
        int4_module.int4_weight_only_matmul_triton(X4, P4, S4, Z4, 32, block=block)


def test_int4_v2_and_int8_refuse_a_zero_split_or_a_bad_tile():
    from lab.kernels import int8 as int8_module

    with pytest.raises(ValueError, match="block SPLIT_K=0 is out of range"):
        int4_module.int4_gemv_v2_triton(torch.zeros(1, 128), torch.zeros(8, 32, dtype=torch.int16),
                                        torch.ones(2, 8), torch.zeros(2, 8), 64, block=(8, 0, 4))
    a, b = torch.zeros(4, 32, dtype=torch.int8), torch.zeros(8, 32, dtype=torch.int8)
    with pytest.raises(ValueError, match="block BLOCK_K=24 is not allowed"):
        int8_module.int8_matmul_triton(a, b, torch.ones(4), torch.ones(8), block=(16, 16, 24, 1, 4, 2))


# --- v1: the Triton kernel under the interpreter ---------------------------------------------------------------

@pytest.fixture(scope="module")
def interpreted():
    """The kernel module re-imported under TRITON_INTERPRET=1 (and restored afterwards)."""
    for (module,) in reloaded(int4_module):
        yield module


def _check_int4(module, M: int, N: int, K: int, group_size: int, dtype: torch.dtype, seed: int, block=None,
                transpose_x: bool = False, scale_dtype: torch.dtype = torch.float32, monkeypatch=None) -> None:
    q, scales, zeros = random_int4(N, K, group_size, seed, scale_dtype)
    g = _gen(seed + 1)
    x = torch.randn(K, M, generator=g).to(dtype).t() if transpose_x else torch.randn(M, K, generator=g).to(dtype)
    poisoned = _PoisonedTorch()
    monkeypatch.setattr(module, "torch", poisoned)
    y = module.int4_weight_only_matmul_triton(x, pack_int4(q, group_size), scales, zeros, group_size, block=block)
    split_k = (block or module.block_sizes_v1(M, N, K, group_size, dtype))[3]
    assert poisoned.empty_calls == (split_k == 1)      # a NaN-filled output buffer when the kernel stores
    assert y.dtype == dtype and y.shape == (M, N) and not y.isnan().any()
    _assert_close(y, x.double() @ dequantized_weight(q, scales, zeros, group_size).T, dtype)


# bf16 is left out here: triton 3.9's interpreter computes tl.dot on bf16 inputs wrongly (it reads
# the raw 16-bit patterns); bf16 is covered by the PyTorch paths and by the CUDA tests below.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("M", [1, 3, 16, 17])
@pytest.mark.parametrize("N, K, group_size", [(16, 64, 32), (40, 128, 32), (24, 128, 64), (8, 64, 64)])
def test_int4_kernel_under_interpreter_matches_float64(interpreted, M, N, K, group_size, dtype, monkeypatch):
    assert os.environ.get("TRITON_INTERPRET") == "1"
    _check_int4(interpreted, M, N, K, group_size, dtype, seed=M * 1000 + N + K + group_size,
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
    _check_int4(interpreted, M, N, K, group_size, torch.float32, seed=M + N + K, block=block,
                transpose_x=transpose_x, monkeypatch=monkeypatch)


@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16])
def test_int4_kernel_under_interpreter_low_precision_scales(interpreted, scale_dtype, monkeypatch):
    _check_int4(interpreted, 3, 24, 64, 32, torch.float32, seed=5, scale_dtype=scale_dtype, monkeypatch=monkeypatch)


def test_int4_dispatch_under_interpreter_uses_the_kernel(interpreted, monkeypatch):
    calls = []
    monkeypatch.setattr(interpreted, "int4_weight_only_matmul_triton",
                        lambda *args: calls.append(args) or torch.zeros(1))
    interpreted.int4_weight_only_matmul(X4, P4, S4, Z4, 32)
    assert len(calls) == 1


# --- v2: the PTX of the compiled dequantization, emulated ------------------------------------------------------

def _lop3(a: int, b: int, c: int, lut: int) -> int:
    """PTX lop3.b32: bit i of the result is bit a_i·4 + b_i·2 + c_i of ``lut`` (the encoding in which
    a = 0xF0, b = 0xCC, c = 0xAA, so lut 0xEA = (0xF0 & 0xCC) | 0xAA is (a & b) | c)."""
    out = 0
    for i in range(32):
        index = ((a >> i) & 1) << 2 | ((b >> i) & 1) << 1 | ((c >> i) & 1)
        out |= ((lut >> index) & 1) << i
    return out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dequant_asm_computes_the_same_bits_as_the_interpreted_path(dtype):
    """Each plane's PTX on random 32-bit registers (two 16-bit words) equals the element-wise bit formula."""
    magic_bits, magic_value = int4_module.MAGIC[dtype]
    programs = int4_module.dequant_asm(magic_bits)
    words = torch.randint(-2 ** 15, 2 ** 15, (64, 2), generator=_gen(3), dtype=torch.int32)
    for p, asm in enumerate(programs):
        shift = int(re.search(r"shr\.b32 t, \$1, (\d+);", asm)[1]) if p else 0
        mask, magic, lut = (int(v, 16) for v in re.search(r"lop3\.b32 \$0, \S+, (0x\w+), (0x\w+), (0x\w+);", asm).groups())
        assert shift == 4 * p and mask == 0x000F000F and magic == magic_bits * 0x10001 and lut == 0xEA
        for lo, hi in words.tolist():
            register = (lo & 0xFFFF) | (hi & 0xFFFF) << 16
            out = _lop3(register >> shift, mask, magic, lut)
            for half, word in ((out & 0xFFFF, lo), (out >> 16, hi)):
                value = torch.tensor([half - (1 << 16) * (half >= 1 << 15)], dtype=torch.int16).view(dtype).item()
                assert value == magic_value + ((word >> 4 * p) & 0xF)              # c + q, exactly


def test_fp32_x_needs_no_asm():
    assert int4_module.dequant_asm(0) == ("",) * 4


# --- v2: the Triton kernels under the interpreter --------------------------------------------------------------

def _check_v2(module, M, N, K, group_size, dtype, block=None, scale_dtype=torch.float32, monkeypatch=None):
    q, scales, zeros = random_int4(N, K, group_size, seed=M * 100 + N + K, scale_dtype=scale_dtype)
    x = torch.randn(M, K, generator=_gen(M + K)).to(dtype)
    poisoned = _PoisonedTorch()
    monkeypatch.setattr(module, "torch", poisoned)
    y = module.int4_gemv_v2_triton(x, pack_int4_v2(q, group_size), scales, zeros, group_size, block=block)
    assert poisoned.empty_calls >= 1                   # NaN-filled output (and partials) that the kernels overwrite
    assert y.dtype == dtype and y.shape == (M, N) and not y.isnan().any()
    _assert_close(y, x.double() @ dequantized_weight(q, scales, zeros, group_size).T, dtype)
    monkeypatch.setattr(module, "torch", torch)
    y1 = module.int4_weight_only_matmul_triton(x, pack_int4(q, group_size), scales, zeros, group_size)
    _assert_close(y, y1.double(), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("M", [1, 3, 8, 9, 16])
@pytest.mark.parametrize("N, K, group_size", [(40, 256, 64), (16, 128, 128), (70, 384, 128)])
def test_v2_under_interpreter_matches_float64_and_v1(interpreted, M, N, K, group_size, dtype, monkeypatch):
    assert os.environ.get("TRITON_INTERPRET") == "1"
    _check_v2(interpreted, M, N, K, group_size, dtype, monkeypatch=monkeypatch)


@pytest.mark.parametrize("M, N, K, group_size, block", [
    (1, 33, 256, 64, (16, 3, 4)),        # 3 splits over 4 groups (uneven), partial N tile
    (5, 70, 512, 128, (32, 4, 4)),       # 3 N tiles (the last partial), splits = groups
    (16, 20, 128, 64, (16, 1, 4)),       # stored directly (no split, no reduction)
    (2, 48, 640, 64, (16, 7, 4)),        # 7 splits over 10 groups
])
def test_v2_under_interpreter_split_k_and_partial_tiles(interpreted, M, N, K, group_size, block, monkeypatch):
    _check_v2(interpreted, M, N, K, group_size, torch.float32, block=block, monkeypatch=monkeypatch)


@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16])
def test_v2_under_interpreter_low_precision_scales(interpreted, scale_dtype, monkeypatch):
    _check_v2(interpreted, 2, 24, 128, 64, torch.float16, scale_dtype=scale_dtype, monkeypatch=monkeypatch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_v2_torch_path_matches_float64(dtype, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, scales, zeros = random_int4(24, 256, 64, seed=9)
    x = torch.randn(5, 256, generator=_gen(9)).to(dtype)
    y = int4_module.int4_gemv_v2(x, pack_int4_v2(q, 64), scales, zeros, 64)
    assert y.dtype == dtype
    _assert_close(y, x.double() @ dequantized_weight(q, scales, zeros, 64).T, dtype)


def test_block_sizes_balance_the_sms_and_bound_the_partials():
    """8192 × 8192, g = 128 (32 tiles of 256 outputs, 64 groups): at M = 1, 4 and 16 the busiest of 132 SMs runs
    ⌈32 · 64 / 132⌉ = 16 group-iterations, an even share (a split of 17 would put 5 programs of 4 groups on
    some SMs: 20); at M = 1 at least one program per SM, partials ≤ 5 % of the weight's bytes."""
    for M in (1, 4, 16):
        block_n, split_k, warps = int4_module.block_sizes_v2(M, 8192, 8192, 128)
        tiles, groups = 8192 // block_n, 8192 // 128
        assert math.ceil(tiles * split_k / 132) * math.ceil(groups / split_k) == math.ceil(tiles * groups / 132)
        if M == 1:
            assert tiles * split_k >= 132 and 8 * split_k * M * 8192 <= 0.05 * 8192 * 8192 / 2


# --- v2: bad input ---------------------------------------------------------------------------------------------

Q, S, Z = random_int4(16, 128, 64, seed=1)
P2 = pack_int4_v2(Q, 64)
X = torch.randn(2, 128)


@pytest.mark.parametrize("call, error, match", [
    (lambda f: f(X.long(), P2, S, Z, 64), TypeError, r"x must be a 2-D tensor of dtype in"),
    (lambda f: f(torch.randn(128, 2).T, P2, S, Z, 64), ValueError, r"x must be contiguous along K"),
    (lambda f: f(X, pack_int4(Q, 64), S, Z, 64), TypeError, r"packed must be a 2-D int16 tensor \(N, K/4\) from "
                                                            r"pack_int4_v2, got torch\.uint8 \(64, 16\)"),
    (lambda f: f(X, P2.T.contiguous().T, S, Z, 64), ValueError, r"packed must be contiguous"),
    (lambda f: f(torch.randn(2, 64), P2, S, Z, 64), ValueError, r"packed has 32 columns; it must have K/4 = 16"),
    (lambda f: f(X, P2, S, Z, 32), ValueError, r"group_size=32 must be a multiple of 64 dividing K=128"),
    (lambda f: f(X, P2, S[:1], Z, 64), ValueError, r"scales must have shape \(2, 16\)"),
    (lambda f: f(X, P2, S, Z.long(), 64), TypeError, r"zeros must be a float tensor \(K/g, N\) = \(2, 16\)"),
])
@pytest.mark.parametrize("path", ["torch", "triton"])
def test_v2_bad_input(call, error, match, path):
    with pytest.raises(error, match=match):
        call(getattr(int4_module, f"int4_gemv_v2_{path}"))


def test_v2_kernel_takes_at_most_16_rows_and_the_reference_any():
    with pytest.raises(ValueError, match=r"x has M=17 rows; the v2 GEMV takes 1 to 16"):
        int4_module.int4_gemv_v2_triton(torch.randn(17, 128), P2, S, Z, 64)
    x = torch.randn(17, 128, generator=_gen(3))
    assert torch.equal(int4_module.int4_gemv_v2_torch(x, P2, S, Z, 64),
                       int4_module.int4_weight_only_matmul_torch(x, pack_int4(Q, 64), S, Z, 64))


def test_v2_dispatch_names_a_non_tensor():
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        int4_module.int4_gemv_v2([[1.0]], P2, S, Z, 64)


# --- CUDA: the compiled Triton kernels against the references --------------------------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(NO_CUDA, reason="the compiled Triton kernels need a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", CUDA_INT4[0].batches)
@pytest.mark.parametrize("group_size", [s.group_size for s in CUDA_INT4])
def test_cuda_int4_kernel_matches_torch_references(M, group_size, dtype):
    (N, K), = CUDA_INT4[0].weights
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
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("M", [1, 5, 8, 9, 16])
@pytest.mark.parametrize("N, K, group_size", [(1024, 2048, 128), (1024, 2048, 64)])    # compiled by the static check
def test_cuda_v2_matches_float64_and_v1(M, N, K, group_size, dtype):
    q, scales, zeros = random_int4(N, K, group_size, seed=M + N, scale_dtype=dtype)
    x = torch.randn(M, K, generator=_gen(M)).to(dtype)
    y = int4_module.int4_gemv_v2(x.cuda(), pack_int4_v2(q, group_size).cuda(), scales.cuda(), zeros.cuda(), group_size)
    assert y.is_cuda and y.dtype == dtype and y.shape == (M, N)
    _assert_close(y.cpu(), x.double() @ dequantized_weight(q, scales, zeros, group_size).T, dtype)
    y1 = int4_module.int4_weight_only_matmul(x.cuda(), pack_int4(q, group_size).cuda(), scales.cuda(), zeros.cuda(),
                                             group_size)
    _assert_close(y.cpu(), y1.cpu().double(), dtype)
