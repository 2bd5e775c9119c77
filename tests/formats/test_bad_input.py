"""Bad input to lab.formats' public names: each refused with a message that names the argument."""

from __future__ import annotations

import torch

from lab.formats import (check_nm, compress, compressed_nbytes, decompress, dequantize_int4, index_bits, meta_shape,
                         pack_bits, pack_int4, pack_int4_v2, unpack_bits, unpack_int4, unpack_int4_v2)
from tests.bad_input import Bad

Q = torch.randint(0, 16, (4, 64), generator=torch.Generator().manual_seed(0))   # codes (N, K)
P1, P2 = pack_int4(Q, 32), pack_int4_v2(Q, 32)
S, Z = torch.rand(2, 4), torch.full((2, 4), 8.0)                                # scales, zeros (K/g, N)
W = torch.tensor([[1.0, 0, 2, 0, 0, 3, 0, 4]] * 3)                               # a 2:4-sparse weight (3, 8)
VALUES, META = compress(W)

CASES: dict[str, list[Bad]] = {
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
}

NO_INPUT: dict[str, str] = {}
