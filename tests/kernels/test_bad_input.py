"""Bad input to lab.kernels' public names: each refused with a message that names the argument.

The dispatchers take the PyTorch path on these CPU tensors; the ``*_triton`` entry points refuse before any
launch, so nothing here needs Triton's interpreter."""

from __future__ import annotations

import torch

from lab.formats import compress, pack_int4, pack_int4_v2
from lab.kernels import (dense_matmul, dense_matmul_torch, dense_matmul_triton, dequantize_int4_v2,
                         dequantize_int4_v2_torch, dequantize_int4_v2_triton, fp4_matmul, fp4_matmul_torch,
                         fp4_matmul_triton, int4_gemv_v2, int4_gemv_v2_torch, int4_gemv_v2_triton,
                         int4_weight_only_matmul, int4_weight_only_matmul_torch, int4_weight_only_matmul_triton,
                         int8_matmul, int8_matmul_torch, int8_matmul_triton, paged_attention_decode,
                         paged_attention_decode_torch, paged_attention_decode_triton, paged_attention_decode_v2,
                         paged_attention_decode_v2_triton, sparse24_matmul, sparse24_matmul_torch,
                         sparse24_matmul_triton, sparse24_matmul_v2, sparse24_matmul_v2_triton)
from tests.bad_input import Bad

_g = torch.Generator().manual_seed(0)
# int4: x (M, K) = (2, 128), W (N, K) = (8, 128) in g = 64 groups
Q = torch.randint(0, 16, (8, 128), generator=_g)
X4, P1, P2 = torch.randn(2, 128, generator=_g), pack_int4(Q, 64), pack_int4_v2(Q, 64)
S, Z = torch.rand(2, 8, generator=_g), torch.full((2, 8), 8.0)
# int8: a (3, 32), b (5, 32)
A8, B8 = torch.randint(-127, 128, (3, 32), dtype=torch.int8, generator=_g), torch.ones(5, 32, dtype=torch.int8)
SA, SB = torch.ones(3), torch.ones(5)
# 2:4: x (3, 32), W (4, 32)
XS = torch.randn(3, 32, generator=_g)
VALUES, META = compress(torch.tensor([[1.0, 0, 2, 0] * 8] * 4))
# paged decode: q (B, H, D) = (2, 4, 16), pools (6 blocks of 16, H_kv = 2, D), tables (2, 3), lengths (2,)
QP, KP, VP = torch.randn(2, 4, 16, generator=_g), torch.randn(6, 16, 2, 16, generator=_g), torch.randn(6, 16, 2, 16)
TABLES, LENGTHS = torch.arange(6, dtype=torch.int32).view(2, 3), torch.tensor([20, 3], dtype=torch.int32)
# dense: x (2, 16), W (4, 16)
XD, WD = torch.randn(2, 16, generator=_g), torch.randn(4, 16, generator=_g)
# fp4 (MXFP4, B = 32): x (2, 64), W (8, 64) as packed codes (8, 32) and scale bytes (8, 2)
XF, PF, SF = torch.randn(2, 64, generator=_g), torch.randint(0, 256, (8, 32), dtype=torch.uint8, generator=_g), \
    torch.full((8, 2), 127, dtype=torch.uint8)


def _int4(f, v2=False) -> list[Bad]:
    P = P2 if v2 else P1
    return [Bad(lambda: f(X4.tolist(), P, S, Z, 64), TypeError, r"x must be a"),
            Bad(lambda: f(X4, P, S, Z, True), TypeError, r"group_size must be an int, got True"),
            Bad(lambda: f(X4, P, S[:, :1], Z, 64), ValueError, r"scales must have shape \(2, 8\)"),
            Bad(lambda: f(X4, P, S, Z.long(), 64), TypeError, r"zeros must be a float tensor"),
            Bad(lambda: f(X4, P.tolist(), S, Z, 64), TypeError, r"packed must be a 2-D")]


def _dequantize(f) -> list[Bad]:
    bf16 = torch.bfloat16
    return [Bad(lambda: f(P1, S, Z, 64, bf16), TypeError, r"packed must have a dtype in \(torch\.int16,\)"),
            Bad(lambda: f(P2.tolist(), S, Z, 64, bf16), TypeError, r"packed must be a torch\.Tensor, got list"),
            Bad(lambda: f(P2, S, Z, 32, bf16), ValueError, r"group_size=32 must be a multiple of 64 dividing K=128"),
            Bad(lambda: f(P2, S, Z, True, bf16), TypeError, r"group_size must be an int, got True"),
            Bad(lambda: f(P2, S, Z, 64, torch.int8), ValueError, r"dtype=torch\.int8 is not allowed"),
            Bad(lambda: f(P2, S[:, :1], Z, 64, bf16), ValueError, r"scales must have shape \(2, 8\)"),
            Bad(lambda: f(P2, S, Z.long(), 64, bf16), TypeError, r"zeros must be a float tensor"),
            Bad(lambda: f(P2, S.T.contiguous().T, Z.T.contiguous().T, 64, bf16), ValueError,
                r"scales and zeros must be contiguous along N")]


def _dense(f) -> list[Bad]:
    return [Bad(lambda: f(XD.tolist(), WD), TypeError, r"x must be a torch\.Tensor, got list"),
            Bad(lambda: f(XD, WD.tolist()), TypeError, r"w must be a torch\.Tensor, got list"),
            Bad(lambda: f(XD.long(), WD), TypeError, r"x must have a dtype in .*, got torch\.int64"),
            Bad(lambda: f(XD[None], WD), ValueError, r"x must have 2 dimensions, got shape \(1, 2, 16\)"),
            Bad(lambda: f(XD, WD.half()), TypeError, r"w must have x's dtype torch\.float32, got torch\.float16"),
            Bad(lambda: f(XD, WD.T), ValueError, r"w has 4 columns; it must have x's K=16"),
            Bad(lambda: f(XD[:0], WD), ValueError, r"x \(M, K\) and w \(N, K\) must be non-empty, got x \(0, 16\)"),
            Bad(lambda: f(XD, WD.to("meta")), ValueError, r"x and w must be on one device, got cpu and meta")]


def _fp4(f) -> list[Bad]:
    return [Bad(lambda: f(XF.tolist(), PF, SF, 1.0, "mxfp4"), TypeError, r"x must be a torch\.Tensor, got list"),
            Bad(lambda: f(XF, PF.char(), SF, 1.0, "mxfp4"), TypeError, r"packed must have a dtype in \(torch\.uint8"),
            Bad(lambda: f(XF, PF, SF, torch.tensor(1.0), "mxfp4"), TypeError, r"global_scale must be a real number"),
            Bad(lambda: f(XF, PF, SF, 0.0, "mxfp4"), ValueError, r"global_scale=0\.0 is out of range"),
            Bad(lambda: f(XF, PF, SF, 1.0, "fp4"), ValueError, r"fmt='fp4' is not allowed"),
            Bad(lambda: f(XF[:, :48], PF, SF, 1.0, "mxfp4"), ValueError, r"x has K=48 columns; mxfp4 needs a positive "
                r"multiple of its block B=32"),
            Bad(lambda: f(XF, PF[:, :16], SF, 1.0, "mxfp4"), ValueError, r"packed must be contiguous \(N, K/2\)"),
            Bad(lambda: f(XF, PF, SF, 1.0, "nvfp4"), ValueError, r"scales must be contiguous \(N, K/B\) = \(8, 4\)"),
            Bad(lambda: f(XF, PF, SF.T.contiguous().T, 1.0, "mxfp4"), ValueError,
                r"scales must be contiguous \(N, K/B\) = \(8, 2\) uint8 for mxfp4 \(B=32\), got \(8, 2\) with strides")]


def _int8(f) -> list[Bad]:
    return [Bad(lambda: f(A8.float(), B8, SA, SB), TypeError, r"a must be a 2-D int8 tensor"),
            Bad(lambda: f(A8, B8.tolist(), SA, SB), TypeError, r"b must be a 2-D int8 tensor, got list"),
            Bad(lambda: f(A8, B8, SA[:2], SB), TypeError, r"a_scale must be a float32 tensor of shape \(3,\)"),
            Bad(lambda: f(A8, B8, SA, SB, "bf16"), TypeError, r"out_dtype must be one of .* got bf16")]


def _sparse24(f) -> list[Bad]:
    return [Bad(lambda: f(XS, VALUES, META, 2.5, 32), TypeError, r"out_features must be an int, got 2\.5"),
            Bad(lambda: f(XS[:, :4], VALUES, META, 4, True), TypeError, r"in_features must be an int, got True"),
            Bad(lambda: f(XS, VALUES.tolist(), META, 4, 32), TypeError, r"values must be a torch\.Tensor"),
            Bad(lambda: f(XS.half(), VALUES, META, 4, 32), TypeError, r"x and values must share one dtype"),
            Bad(lambda: f(XS, VALUES, META.long(), 4, 32), TypeError, r"meta must be uint8 .*, got torch\.int64")]


def _paged(f) -> list[Bad]:
    return [Bad(lambda: f(QP, KP.tolist(), VP, TABLES, LENGTHS), TypeError, r"k_pool must be a torch\.Tensor"),
            Bad(lambda: f(QP, KP, VP, TABLES.tolist(), LENGTHS), TypeError, r"tables must be a torch\.Tensor"),
            Bad(lambda: f(QP, KP, VP, TABLES, [20, 3]), TypeError, r"lengths must be a torch\.Tensor"),
            Bad(lambda: f(QP, KP[:, :, :0], VP[:, :, :0], TABLES, LENGTHS), ValueError,
                r"H=4 query heads must be a multiple of H_kv=0"),                                # ZeroDivisionError
            Bad(lambda: f(QP, KP.int(), VP.int(), TABLES, LENGTHS), TypeError, r"k_pool must have a dtype in"),
            Bad(lambda: f(QP, KP, VP, TABLES.long(), LENGTHS), TypeError, r"tables must be int32"),
            Bad(lambda: f(QP, KP, VP, TABLES, LENGTHS + 40), ValueError, r"lengths must lie in \[1, "),
            Bad(lambda: f(QP, KP, VP, TABLES - 1, LENGTHS), ValueError, r"tables\[0, 0\]=-1 is not a block")]


def _paged_flag(f) -> list[Bad]:
    return _paged(f) + [Bad(lambda: f(QP, KP, VP, TABLES, LENGTHS, "no"), TypeError,
                            r"check_lengths must be one of \(True, False\), got the str 'no'")]


CASES: dict[str, list[Bad]] = {
    "dense_matmul": _dense(dense_matmul),
    "dense_matmul_torch": _dense(dense_matmul_torch),
    "dense_matmul_triton": _dense(dense_matmul_triton) + [
        Bad(lambda: dense_matmul_triton(XD, WD, block=(8, 16, 16, 0, 4)), ValueError,
            r"block SPLIT_K=0 is out of range"),
        Bad(lambda: dense_matmul_triton(XD, WD, block=(8, 16, 8, 1, 4)), ValueError,
            r"\(BLOCK_M, BLOCK_N, BLOCK_K\) = \(8, 16, 8\) is not allowed: tl\.dot needs"),
        Bad(lambda: dense_matmul_triton(XD, WD, block="big"), TypeError, r"block must be a tuple")],
    "int4_weight_only_matmul": _int4(int4_weight_only_matmul),
    "int4_weight_only_matmul_torch": _int4(int4_weight_only_matmul_torch),
    "int4_weight_only_matmul_triton": _int4(int4_weight_only_matmul_triton) + [
        Bad(lambda: int4_weight_only_matmul_triton(X4, P1, S, Z, 64, block=(16, 64, 32, 0, 4)), ValueError,
            r"block SPLIT_K=0 is out of range"),
        Bad(lambda: int4_weight_only_matmul_triton(X4, P1, S, Z, 64, block="big"), TypeError,
            r"block must be a tuple")],
    "int4_gemv_v2": _int4(int4_gemv_v2, v2=True),
    "int4_gemv_v2_torch": _int4(int4_gemv_v2_torch, v2=True),                 # any M: the reference
    "int4_gemv_v2_triton": _int4(int4_gemv_v2_triton, v2=True) + [
        Bad(lambda: int4_gemv_v2_triton(torch.randn(17, 128), P2, S, Z, 64), ValueError, r"x has M=17 rows"),
        Bad(lambda: int4_gemv_v2_triton(X4, P2, S, Z, 64, block=(64, 1.5, 4)), TypeError,
            r"block SPLIT_K must be an int")],
    "dequantize_int4_v2": _dequantize(dequantize_int4_v2),
    "dequantize_int4_v2_torch": _dequantize(dequantize_int4_v2_torch),
    "dequantize_int4_v2_triton": _dequantize(dequantize_int4_v2_triton),
    "fp4_matmul": _fp4(fp4_matmul),
    "fp4_matmul_torch": _fp4(fp4_matmul_torch),
    "fp4_matmul_triton": _fp4(fp4_matmul_triton) + [
        Bad(lambda: fp4_matmul_triton(torch.randn(17, 64), PF, SF, 1.0, "mxfp4"), ValueError, r"x has M=17 rows"),
        Bad(lambda: fp4_matmul_triton(XF, PF, SF, 1.0, "mxfp4", block=(8, 1, 4)), ValueError,
            r"block BLOCK_N=8 is not allowed"),
        Bad(lambda: fp4_matmul_triton(XF, PF, SF, 1.0, "mxfp4", block="big"), TypeError, r"block must be a tuple"),
        Bad(lambda: fp4_matmul_triton(XF, torch.zeros(8 * 32 + 1, dtype=torch.uint8)[1:].view(8, 32), SF, 1.0,
                                      "mxfp4"), ValueError, r"packed must start at a multiple of 4 bytes")],
    "int8_matmul": _int8(int8_matmul),
    "int8_matmul_torch": _int8(int8_matmul_torch),
    "int8_matmul_triton": _int8(int8_matmul_triton) + [
        Bad(lambda: int8_matmul_triton(A8, B8, SA, SB, block=(16, 16, 24, 1, 4, 2)), ValueError,
            r"block BLOCK_K=24 is not allowed")],
    "sparse24_matmul": _sparse24(sparse24_matmul),
    "sparse24_matmul_torch": _sparse24(sparse24_matmul_torch),
    "sparse24_matmul_triton": _sparse24(sparse24_matmul_triton) + [
        Bad(lambda: sparse24_matmul_triton(XS, VALUES, META, 4, 32, out=[0.0]), TypeError,
            r"out must be a torch\.Tensor, got list"),                                          # AttributeError
        Bad(lambda: sparse24_matmul_triton(XS, VALUES, META, 4, 32, block=(16, 16, 12, 4)), ValueError,
            r"block BLOCK_K=12 is not allowed")],
    "sparse24_matmul_v2": _sparse24(sparse24_matmul_v2),
    "sparse24_matmul_v2_triton": _sparse24(sparse24_matmul_v2_triton),
    "paged_attention_decode": _paged_flag(paged_attention_decode),
    "paged_attention_decode_torch": _paged(paged_attention_decode_torch),
    "paged_attention_decode_triton": _paged_flag(paged_attention_decode_triton),
    "paged_attention_decode_v2": _paged_flag(paged_attention_decode_v2),
    "paged_attention_decode_v2_triton": _paged_flag(paged_attention_decode_v2_triton) + [
        Bad(lambda: paged_attention_decode_v2_triton(QP, KP, VP, TABLES, LENGTHS, splits=True), TypeError,
            r"splits must be an int, got True"),
        Bad(lambda: paged_attention_decode_v2_triton(QP, KP, VP, TABLES, LENGTHS, splits=4), ValueError,
            r"splits=4 must be an int in \[1, max_blocks=3\]")],
}

NO_INPUT: dict[str, str] = {}
