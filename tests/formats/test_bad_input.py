"""Bad input to lab.formats' public names: each refused with a message that names the argument."""

from __future__ import annotations

import torch

from lab.formats import (NF4Tensor, check_nm, compress, compressed_nbytes, decode_fp4_scales, decompress,
                         dequantize_blockwise, dequantize_fp4, dequantize_int4, dequantize_nf4, dynamic_map, e2m1_codes,
                         index_bits, meta_shape, nearest_code_table, nf4_bits_per_parameter, pack_bits, pack_fp4,
                         pack_int4, pack_int4_v2, quantize_blockwise, quantize_nf4, unpack_bits, unpack_fp4,
                         unpack_int4, unpack_int4_v2)
from tests.bad_input import Bad, T, V

Q = torch.randint(0, 16, (4, 64), generator=torch.Generator().manual_seed(0))   # codes (N, K)
P1, P2 = pack_int4(Q, 32), pack_int4_v2(Q, 32)
S, Z = torch.rand(2, 4), torch.full((2, 4), 8.0)                                # scales, zeros (K/g, N)
W = torch.tensor([[1.0, 0, 2, 0, 0, 3, 0, 4]] * 3)                               # a 2:4-sparse weight (3, 8)
VALUES, META = compress(W)
CODE = dynamic_map(True)                                                        # the signed dynamic map
CODES, ABSMAX = quantize_blockwise(torch.ones(10), CODE, 8)                     # 10 codes in 2 blocks of 8
W_NF4 = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
NF4 = quantize_nf4(W_NF4)                                                       # 4 blocks of 64, double-quantized
Q_FP4 = torch.randint(0, 16, (4, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
P_FP4, S_FP4 = pack_fp4(Q_FP4), torch.full((4, 2), 127, dtype=torch.uint8)     # E2M1 codes, E8M0 scales B = 32

CASES: dict[str, list[Bad]] = {
    "e2m1_codes": [
        T(lambda: e2m1_codes([0.5]), r"values must be a torch\.Tensor, got list"),
        T(lambda: e2m1_codes(Q_FP4), r"values must be a floating-point tensor, got torch\.uint8"),
        V(lambda: e2m1_codes(torch.tensor([0.5, 5.0])), r"values must hold E2M1 values .*got \[5\.0\]"),
    ],
    "pack_fp4": [
        T(lambda: pack_fp4(Q_FP4.long()), r"q must have a dtype in \(torch\.uint8,\), got torch\.int64"),
        V(lambda: pack_fp4(Q_FP4[:, :3]), r"q must have an even number of columns"),
        V(lambda: pack_fp4(Q_FP4 + 16), r"q must hold 4-bit codes in \[0, 15\]"),
        V(lambda: pack_fp4(Q_FP4[0]), r"q must have 2 dimensions"),
    ],
    "unpack_fp4": [
        T(lambda: unpack_fp4(P_FP4.to(torch.int8)), r"packed must have a dtype in \(torch\.uint8,\)"),
        V(lambda: unpack_fp4(P_FP4[0]), r"packed must have 2 dimensions"),
    ],
    "decode_fp4_scales": [
        T(lambda: decode_fp4_scales(S_FP4.float(), "e8m0"), r"scales must have a dtype in \(torch\.uint8,\)"),
        V(lambda: decode_fp4_scales(S_FP4, "e5m2"), r"scale_format='e5m2' is not allowed"),
    ],
    "dequantize_fp4": [
        V(lambda: dequantize_fp4(P_FP4, S_FP4[:3]), r"scales must have shape \(N, K/B\) = \(4, K/B\)"),
        V(lambda: dequantize_fp4(P_FP4, S_FP4[:, :0]), r"scales must have shape \(N, K/B\)"),
        V(lambda: dequantize_fp4(P_FP4, torch.zeros(4, 3, dtype=torch.uint8)), r"scales\.shape\[1\]=3 is not allowed"),
        V(lambda: dequantize_fp4(P_FP4, S_FP4, 0.0), r"global_scale=0\.0 is out of range"),
        T(lambda: dequantize_fp4(P_FP4, S_FP4, "1"), r"global_scale must be a real number"),
        V(lambda: dequantize_fp4(P_FP4, S_FP4, 1.0, "nvfp4"), r"scale_format='nvfp4' is not allowed"),
        T(lambda: dequantize_fp4(P_FP4.float(), S_FP4), r"packed must have a dtype in"),
    ],
    "pack_int4": [
        Bad(lambda: pack_int4(Q.float(), 32), TypeError, r"q must be a 2-D integer tensor, got torch\.float32"),
        Bad(lambda: pack_int4(Q, True), TypeError, r"group_size must be an int, got True"),
        Bad(lambda: pack_int4(Q, 3), ValueError, r"group_size=3 is not allowed"),
        Bad(lambda: pack_int4(Q + 1, 32), ValueError, r"q must hold 4-bit codes in \[0, 15\], got values in \[1, 16\]"),
    ],
    "unpack_int4": [
        Bad(lambda: unpack_int4(P1.to(torch.int8), 32), TypeError, r"packed must be a 2-D uint8 tensor"),
        Bad(lambda: unpack_int4(P1, 48), ValueError, r"group_size=48 is not allowed"),
        Bad(lambda: unpack_int4(P1, 32.0), TypeError, r"group_size must be an int, got 32\.0"),
    ],
    "dequantize_int4": [
        Bad(lambda: dequantize_int4(P1, S[:, :1], Z, 32), ValueError,
            r"scales must have shape \(K/g, N\) = \(2, 4\), got \(2, 1\)"),                 # broadcast silently before
        Bad(lambda: dequantize_int4(P1, S, Z[:1], 32), ValueError, r"zeros must have shape \(K/g, N\)"),
        Bad(lambda: dequantize_int4(P1, S.tolist(), Z, 32), TypeError, r"scales must be a torch\.Tensor, got list"),
        Bad(lambda: dequantize_int4(P1, S, Z.long(), 32), TypeError, r"zeros must have a dtype in"),
        Bad(lambda: dequantize_int4(P1, S[0], Z, 32), ValueError, r"scales must have 2 dimensions"),
    ],
    "pack_int4_v2": [
        Bad(lambda: pack_int4_v2(Q, 6), ValueError, r"group_size=6"),
        Bad(lambda: pack_int4_v2(Q.tolist(), 32), TypeError, r"q must be a 2-D integer tensor, got list"),
    ],
    "unpack_int4_v2": [
        Bad(lambda: unpack_int4_v2(P1, 32), TypeError, r"packed must be a 2-D int16 tensor, got torch\.uint8"),
        Bad(lambda: unpack_int4_v2(P2, False), TypeError, r"group_size must be an int, got False"),
    ],
    "check_nm": [
        Bad(lambda: check_nm(True, 4), TypeError, r"n must be an int, got True"),
        Bad(lambda: check_nm(2, 4.0), TypeError, r"m must be an int, got 4\.0"),
        Bad(lambda: check_nm(5, 4), ValueError, r"n=5, m=4 is not allowed"),
        Bad(lambda: check_nm(2, 4, 10), ValueError, r"m=4 is not allowed; use a divisor of in_features=10"),
    ],
    "index_bits": [
        Bad(lambda: index_bits(0), ValueError, r"m=0 is out of range"),                   # returned 1 before
        Bad(lambda: index_bits(2.5), TypeError, r"m must be an int, got 2\.5"),
    ],
    "meta_shape": [
        Bad(lambda: meta_shape(4, 10), ValueError, r"m=4 is not allowed; use a divisor of in_features=10"),  # floored
        Bad(lambda: meta_shape(-4, 8), ValueError, r"out_features=-4 is out of range"),
        Bad(lambda: meta_shape(4, 8, True, 4), TypeError, r"n must be an int, got True"),
        Bad(lambda: meta_shape(4, 8.0), TypeError, r"in_features must be an int, got 8\.0"),
    ],
    "compressed_nbytes": [
        Bad(lambda: compressed_nbytes(4, 8, "bf16"), TypeError, r"dtype must be a torch dtype .* got 'bf16'"),
        Bad(lambda: compressed_nbytes(4, 8, torch.int32), ValueError, r"dtype=torch\.int32 is not allowed"),
        Bad(lambda: compressed_nbytes(-4, 8, torch.float16), ValueError, r"out_features=-4"),    # negative bytes before
    ],
    "pack_bits": [
        Bad(lambda: pack_bits(torch.tensor([[5, 1]]), 2), ValueError,
            r"idx must hold values in \[0, 2\^bits = 4\), got \[1, 5\]"),                 # cut to 2 bits before
        Bad(lambda: pack_bits(torch.tensor([[-1, 1]]), 2), ValueError, r"idx must hold values in"),
        Bad(lambda: pack_bits(torch.tensor([[1.0, 1.0]]), 2), TypeError, r"idx must have a dtype in"),
        Bad(lambda: pack_bits(torch.tensor([1, 1]), 2), ValueError, r"idx must have 2 dimensions"),
        Bad(lambda: pack_bits(torch.zeros(1, 0, dtype=torch.int64), 0), ValueError, r"bits=0 is out of range"),
        Bad(lambda: pack_bits(torch.zeros(1, 2, dtype=torch.int64), True), TypeError, r"bits must be an int"),
    ],
    "unpack_bits": [
        Bad(lambda: unpack_bits(META, 2, 99), ValueError, r"length=99 indices of bits=2 need 198 bits"),
        Bad(lambda: unpack_bits(META.long(), 2, 4), TypeError, r"meta must have a dtype in \(torch\.uint8,\)"),
        Bad(lambda: unpack_bits(META, 2, -1), ValueError, r"length=-1 is out of range"),
    ],
    "compress": [
        Bad(lambda: compress(W, True, 4), TypeError, r"n must be an int, got True"),
        Bad(lambda: compress(W[0]), ValueError, r"weight must have 2 dimensions"),
        Bad(lambda: compress(W.tolist()), TypeError, r"weight must be a torch\.Tensor"),
        Bad(lambda: compress(torch.ones(2, 8)), ValueError, r"weight is not 2:4 sparse: row 0, group 0"),
    ],
    "decompress": [
        Bad(lambda: decompress(VALUES.tolist(), META, 8), TypeError, r"values must be a torch\.Tensor, got list"),
        Bad(lambda: decompress(VALUES, META.tolist(), 8), TypeError, r"meta must be a torch\.Tensor, got list"),
        Bad(lambda: decompress(VALUES, META, True), TypeError, r"in_features must be an int, got True"),
        Bad(lambda: decompress(VALUES, META, 16), ValueError, r"values must have shape \(out, 8\)"),
        Bad(lambda: decompress(VALUES, META.to(torch.int32), 8), TypeError, r"meta must be uint8 .*, got torch\.int32"),
    ],
    "dynamic_map": [
        T(lambda: dynamic_map("yes"), r"signed must be a bool, got 'yes'"),
        V(lambda: dynamic_map(True, torch.float16), r"dtype=torch\.float16 is not allowed"),
    ],
    "nearest_code_table": [
        T(lambda: nearest_code_table(CODE.tolist()), r"code must be a torch\.Tensor, got list"),
        V(lambda: nearest_code_table(torch.zeros(256)), r"code must hold 256 increasing values"),
        T(lambda: nearest_code_table(CODE.double()), r"code must have a dtype in \(torch\.float32,\)"),
    ],
    "quantize_blockwise": [
        V(lambda: quantize_blockwise(torch.ones(10), CODE, 100), r"block_size=100 .*power of two"),
        V(lambda: quantize_blockwise(torch.ones(10), torch.zeros(256), 8), r"code must hold 256 increasing"),
        T(lambda: quantize_blockwise(torch.ones(10, dtype=torch.int64), CODE), r"x must be a floating-point tensor"),
        V(lambda: quantize_blockwise(torch.tensor([1.0, float("nan")]), CODE), r"x contains NaN or infinite"),
    ],
    "dequantize_blockwise": [
        T(lambda: dequantize_blockwise(CODES.long(), ABSMAX, CODE, 8, (10,)), r"codes must have a dtype in"),
        T(lambda: dequantize_blockwise(CODES, ABSMAX.double(), CODE, 8, (10,)), r"absmax must have a dtype in"),
        V(lambda: dequantize_blockwise(CODES, ABSMAX, CODE, 8, (11,)), r"shape=\(11,\) and absmax \(2 blocks\)"),
        V(lambda: dequantize_blockwise(CODES, ABSMAX, CODE, 4, (10,)), r"do not match codes \(10 elements"),
    ],
    "NF4Tensor": [
        T(lambda: NF4Tensor(NF4.packed.to(torch.int8), NF4.absmax, 64), r"packed must have a dtype in"),
        V(lambda: NF4Tensor(NF4.packed, NF4.absmax[:3], 64, NF4.absmax_scales, NF4.absmax_mean, 256),
          r"absmax must hold N·K/block_size = 4 values, got 3"),
        V(lambda: NF4Tensor(NF4.packed, NF4.absmax, 48), r"block_size=48 is not allowed; use an even divisor of K=64"),
        V(lambda: NF4Tensor(NF4.packed, torch.ones(4), 64, NF4.absmax_scales), r"absmax_scales, absmax_mean and dq_"),
        T(lambda: NF4Tensor(NF4.packed, NF4.absmax, 64, NF4.absmax_scales, NF4.absmax_mean), r"dq_block must be"),
        V(lambda: NF4Tensor(NF4.packed, NF4.absmax, 64, torch.ones(2), NF4.absmax_mean, 256),
          r"absmax_scales must hold ⌈4 / dq_block⌉ = 1 values, got 2"),
    ],
    "quantize_nf4": [
        T(lambda: quantize_nf4(W_NF4.long()), r"W must have a dtype in"),
        T(lambda: quantize_nf4(W_NF4 > 0), r"W must have a dtype in .*got torch\.bool"),
        T(lambda: quantize_nf4(W_NF4.tolist()), r"W must be a torch\.Tensor, got list"),
        V(lambda: quantize_nf4(W_NF4 / 0), r"W contains NaN or infinite entries"),
        V(lambda: quantize_nf4(W_NF4.view(-1)), r"W must have 2 dimensions"),
        V(lambda: quantize_nf4(W_NF4[:0]), r"W is empty \(shape \(0, 64\)\)"),
        V(lambda: quantize_nf4(W_NF4, 0), r"block_size=0 is out of range"),
        V(lambda: quantize_nf4(W_NF4, 48), r"block_size=48 is not allowed; use an even divisor of K=64"),
        V(lambda: quantize_nf4(W_NF4, 1), r"block_size=1 is not allowed"),
        T(lambda: quantize_nf4(W_NF4, True), r"block_size must be an int, got True"),
        T(lambda: quantize_nf4(W_NF4, 64, 1), r"double_quant must be a bool, got 1"),
        V(lambda: quantize_nf4(W_NF4, 64, True, 100), r"dq_block=100 is not allowed; use a positive power of two"),
    ],
    "dequantize_nf4": [
        T(lambda: dequantize_nf4(W_NF4), r"q must be an NF4Tensor .*got Tensor"),
        T(lambda: dequantize_nf4(NF4, "bf16"), r"dtype must be a torch dtype .*got 'bf16'"),
        V(lambda: dequantize_nf4(NF4, torch.int8), r"dtype=torch\.int8 is not allowed; use one of"),
    ],
    "nf4_bits_per_parameter": [
        V(lambda: nf4_bits_per_parameter(0), r"block_size=0 is out of range"),
        V(lambda: nf4_bits_per_parameter(63), r"block_size=63 is not allowed; use an even block size"),
        T(lambda: nf4_bits_per_parameter(64.0), r"block_size must be an int, got 64\.0"),
        T(lambda: nf4_bits_per_parameter(64, "yes"), r"double_quant must be a bool"),
        V(lambda: nf4_bits_per_parameter(64, True, 3), r"dq_block=3 is not allowed"),
    ],
}

NO_INPUT: dict[str, str] = {
    "e2m1_values": "takes no argument: the 16 values are a constant of the format",
    "nf4_values": "takes no argument: the 16 levels are a constant of the format",
}
