"""lab.quant.packing.pack_int4_v2 and lab.kernels.int4_gemv_v2 against independent references.

References: the codes themselves (exact round trip), hand-packed words from the documented formula, a
float64 matmul with the dequantized weight (element by element from the codes), and v1
(`lab.kernels.int4_matmul`) on the same weight. The kernels run under TRITON_INTERPRET=1 (fp32 and fp16;
the interpreter computes bf16 tl.dot wrongly, see test_int4_int8_kernels.py) with NaN-poisoned outputs;
the compiled kernel's inline PTX is checked by emulating its LOP3 on the CPU, and on a GPU against the
same references.
"""

from __future__ import annotations

import os

import pytest
import torch

import lab.quant  # noqa: F401  (before the kernel modules, as in test_int4_int8_kernels.py)
from lab.kernels import int4_gemv_v2 as v2_module
from lab.kernels import int4_matmul as v1_module
from lab.quant import pack_int4, pack_int4_v2, unpack_int4_v2
from tests.kernels.interpreted import reloaded
from tests.kernels.test_int4_int8_kernels import (
    NO_CUDA,
    _assert_close,
    _gen,
    _PoisonedTorch,
    dequantized_weight,
    random_int4,
)

# --- the v2 layout -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("N, K, group_size", [(1, 4, 4), (3, 64, 64), (5, 256, 128), (2, 192, 64), (4, 96, 32)])
def test_pack_v2_round_trip_is_exact(N, K, group_size):
    q = torch.randint(0, 16, (N, K), generator=_gen(N * K + group_size))
    packed = pack_int4_v2(q, group_size)
    assert packed.dtype == torch.int16 and packed.shape == (N, K // 4) and packed.is_contiguous()
    assert torch.equal(unpack_int4_v2(packed, group_size).long(), q)


def test_pack_v2_layout_by_hand():
    """word[n, G·g/4 + j] = Σ_p q[n, G·g + p·g/4 + j] << 4p: g = 8, two groups, one row."""
    q = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 15, 0, 15, 0, 15, 0, 15, 0]])
    words = pack_int4_v2(q, 8).to(torch.int32) & 0xFFFF
    assert words.tolist() == [[1 | 3 << 4 | 5 << 8 | 7 << 12, 2 | 4 << 4 | 6 << 8 | 8 << 12,
                               15 | 15 << 4 | 15 << 8 | 15 << 12, 0]]


def test_pack_v2_bad_input():
    with pytest.raises(ValueError, match=r"q must hold 4-bit codes in \[0, 15\], got values in \[0, 16\]"):
        pack_int4_v2(torch.tensor([[0, 16, 0, 0]]), 4)
    with pytest.raises(ValueError, match=r"group_size=6 is not allowed; the v2 layout needs a multiple of 4"):
        pack_int4_v2(torch.zeros(1, 12, dtype=torch.int64), 6)
    with pytest.raises(TypeError, match=r"packed must be a 2-D int16 tensor, got torch\.uint8"):
        unpack_int4_v2(torch.zeros(2, 2, dtype=torch.uint8), 4)


# --- the PTX of the compiled dequantization, emulated --------------------------------------------------------


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
    import re

    magic_bits, magic_value = v2_module.MAGIC[dtype]
    programs = v2_module.dequant_asm(magic_bits)
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
    assert v2_module.dequant_asm(0) == ("",) * 4


# --- the kernels under the interpreter -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def interpreted():
    """v1 and v2 re-imported under TRITON_INTERPRET=1 (and restored afterwards)."""
    yield from reloaded(v2_module, v1_module)


def _check(modules, M, N, K, group_size, dtype, block=None, scale_dtype=torch.float32, monkeypatch=None):
    v2, v1 = modules
    q, scales, zeros = random_int4(N, K, group_size, seed=M * 100 + N + K, scale_dtype=scale_dtype)
    x = torch.randn(M, K, generator=_gen(M + K)).to(dtype)
    poisoned = _PoisonedTorch()
    monkeypatch.setattr(v2, "torch", poisoned)
    y = v2.int4_gemv_v2_triton(x, pack_int4_v2(q, group_size), scales, zeros, group_size, block=block)
    assert poisoned.empty_calls >= 1                   # NaN-filled output (and partials) that the kernels overwrite
    assert y.dtype == dtype and y.shape == (M, N) and not y.isnan().any()
    _assert_close(y, x.double() @ dequantized_weight(q, scales, zeros, group_size).T, dtype)
    monkeypatch.setattr(v2, "torch", torch)
    y1 = v1.int4_weight_only_matmul_triton(x, pack_int4(q, group_size), scales, zeros, group_size)
    _assert_close(y, y1.double(), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("M", [1, 3, 8, 9, 16])
@pytest.mark.parametrize("N, K, group_size", [(40, 256, 64), (16, 128, 128), (70, 384, 128)])
def test_v2_under_interpreter_matches_float64_and_v1(interpreted, M, N, K, group_size, dtype, monkeypatch):
    assert os.environ.get("TRITON_INTERPRET") == "1"
    _check(interpreted, M, N, K, group_size, dtype, monkeypatch=monkeypatch)


@pytest.mark.parametrize("M, N, K, group_size, block", [
    (1, 33, 256, 64, (16, 3, 4)),        # 3 splits over 4 groups (uneven), partial N tile
    (5, 70, 512, 128, (32, 4, 4)),       # 3 N tiles (the last partial), splits = groups
    (16, 20, 128, 64, (16, 1, 4)),       # stored directly (no split, no reduction)
    (2, 48, 640, 64, (16, 7, 4)),        # 7 splits over 10 groups
])
def test_v2_under_interpreter_split_k_and_partial_tiles(interpreted, M, N, K, group_size, block, monkeypatch):
    _check(interpreted, M, N, K, group_size, torch.float32, block=block, monkeypatch=monkeypatch)


@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16])
def test_v2_under_interpreter_low_precision_scales(interpreted, scale_dtype, monkeypatch):
    _check(interpreted, 2, 24, 128, 64, torch.float16, scale_dtype=scale_dtype, monkeypatch=monkeypatch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_v2_torch_path_matches_float64(dtype, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, scales, zeros = random_int4(24, 256, 64, seed=9)
    x = torch.randn(5, 256, generator=_gen(9)).to(dtype)
    y = v2_module.int4_gemv_v2(x, pack_int4_v2(q, 64), scales, zeros, 64)
    assert y.dtype == dtype
    _assert_close(y, x.double() @ dequantized_weight(q, scales, zeros, 64).T, dtype)


def test_block_sizes_fill_the_gpu_and_bound_the_partials():
    """8192 × 8192, g = 128: ≥ 4 programs per SM at M = 1 with partials ≤ 5 % of the weight's bytes;
    at M = 16 at least one program per SM."""
    for M in (1, 16):
        block_n, split_k, warps = v2_module.block_sizes(M, 8192, 8192, 128)
        programs = 8192 // block_n * split_k
        assert programs >= (4 * 132 if M == 1 else 132) and split_k <= 8192 // 128
        if M == 1:
            assert 8 * split_k * M * 8192 <= 0.05 * 8192 * 8192 / 2


# --- bad input -------------------------------------------------------------------------------------------------

Q, S, Z = random_int4(16, 128, 64, seed=1)
P2 = pack_int4_v2(Q, 64)
X = torch.randn(2, 128)


@pytest.mark.parametrize("call, error, match", [
    (lambda f: f(X.long(), P2, S, Z, 64), TypeError, r"x must be a 2-D tensor of dtype in"),
    (lambda f: f(torch.randn(17, 128), P2, S, Z, 64), ValueError, r"x has M=17 rows; the v2 GEMV takes 1 to 16"),
    (lambda f: f(torch.randn(128, 2).T, P2, S, Z, 64), ValueError, r"x must be contiguous along K"),
    (lambda f: f(X, pack_int4(Q, 64), S, Z, 64), TypeError, r"packed must be a 2-D int16 tensor \(N, K/4\) from "
                                                            r"pack_int4_v2, got torch\.uint8 \(64, 16\)"),
    (lambda f: f(X, P2.T.contiguous().T, S, Z, 64), ValueError, r"packed must be contiguous"),
    (lambda f: f(torch.randn(2, 64), P2, S, Z, 64), ValueError, r"packed has 32 columns; it must have K/4 = 16"),
    (lambda f: f(X, P2, S, Z, 32), ValueError, r"group_size=32 must be a multiple of 64 dividing K=128"),
    (lambda f: f(X, P2, S[:1], Z, 64), TypeError, r"scales must be a float tensor of shape \(2, 16\)"),
    (lambda f: f(X, P2, S, Z.long(), 64), TypeError, r"zeros must be a float tensor of shape \(2, 16\)"),
])
@pytest.mark.parametrize("path", ["torch", "triton"])
def test_v2_bad_input(call, error, match, path):
    with pytest.raises(error, match=match):
        call(getattr(v2_module, f"int4_gemv_v2_{path}"))


def test_v2_dispatch_names_a_non_tensor():
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        v2_module.int4_gemv_v2([[1.0]], P2, S, Z, 64)


# --- CUDA: the compiled kernels (inline PTX, wgmma) ------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(NO_CUDA, reason="the compiled Triton kernels need a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("M", [1, 5, 8, 9, 16])
@pytest.mark.parametrize("N, K, group_size", [(1024, 2048, 128), (1024, 2048, 64)])    # compiled by the static check
def test_cuda_v2_matches_float64_and_v1(M, N, K, group_size, dtype):
    q, scales, zeros = random_int4(N, K, group_size, seed=M + N, scale_dtype=dtype)
    x = torch.randn(M, K, generator=_gen(M)).to(dtype)
    y = v2_module.int4_gemv_v2(x.cuda(), pack_int4_v2(q, group_size).cuda(), scales.cuda(), zeros.cuda(), group_size)
    assert y.is_cuda and y.dtype == dtype and y.shape == (M, N)
    _assert_close(y.cpu(), x.double() @ dequantized_weight(q, scales, zeros, group_size).T, dtype)
    y1 = v1_module.int4_weight_only_matmul(x.cuda(), pack_int4(q, group_size).cuda(), scales.cuda(), zeros.cuda(),
                                           group_size)
    _assert_close(y.cpu(), y1.cpu().double(), dtype)
