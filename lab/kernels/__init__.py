"""Triton kernels of the book, one module per op (int4, int4_dequant, fp4_gemv, int8, sparse24, paged_attention,
and dense: the baseline they are measured against): the PyTorch path for the CPU, v1 and v2 side by side, and the
bytes each call moves; each tested under TRITON_INTERPRET=1."""

from lab.kernels.dense import dense_matmul, dense_matmul_torch, dense_matmul_triton
from lab.kernels.fp4_gemv import fp4_matmul, fp4_matmul_torch, fp4_matmul_triton
from lab.kernels.int4 import (int4_gemv_v2, int4_gemv_v2_torch, int4_gemv_v2_triton, int4_weight_only_matmul,
                              int4_weight_only_matmul_torch, int4_weight_only_matmul_triton)
from lab.kernels.int4_dequant import dequantize_int4_v2, dequantize_int4_v2_torch, dequantize_int4_v2_triton
from lab.kernels.int8 import int8_matmul, int8_matmul_torch, int8_matmul_triton
from lab.kernels.paged_attention import (paged_attention_decode, paged_attention_decode_torch,
                                         paged_attention_decode_triton, paged_attention_decode_v2,
                                         paged_attention_decode_v2_triton)
from lab.kernels.sparse24 import (sparse24_matmul, sparse24_matmul_torch, sparse24_matmul_triton, sparse24_matmul_v2,
                                  sparse24_matmul_v2_triton)

__all__ = [
    "dense_matmul", "dense_matmul_torch", "dense_matmul_triton",
    "int4_weight_only_matmul", "int4_weight_only_matmul_torch", "int4_weight_only_matmul_triton",
    "int4_gemv_v2", "int4_gemv_v2_torch", "int4_gemv_v2_triton",
    "dequantize_int4_v2", "dequantize_int4_v2_torch", "dequantize_int4_v2_triton",
    "fp4_matmul", "fp4_matmul_torch", "fp4_matmul_triton",
    "int8_matmul", "int8_matmul_torch", "int8_matmul_triton",
    "paged_attention_decode", "paged_attention_decode_torch", "paged_attention_decode_triton",
    "paged_attention_decode_v2", "paged_attention_decode_v2_triton",
    "sparse24_matmul", "sparse24_matmul_torch", "sparse24_matmul_triton", "sparse24_matmul_v2",
    "sparse24_matmul_v2_triton",
]
