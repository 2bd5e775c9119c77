"""Storage layouts shared by the compression methods and the kernels that read them.

    int4       two 4-bit codes per byte (v1: (K/2, N) uint8, group-interleaved) or four per 16-bit word
               (v2: (N, K/4) int16, planar within a group), with scales and zeros (K/g, N)
    sparse24   an N:M-sparse weight as its kept values and their 2-bit positions (2:4: (out, in/2) values,
               (out, in/8) uint8 metadata)
    blockwise  block-wise dynamic 8-bit codes of a tensor, one fp32 absmax per block (8-bit optimizer states,
               NF4's double-quantized scales)
    fp4        FP4 (E2M1) codes two per byte, (N, K/2) uint8 low nibble first, with an 8-bit scale per block
               (E8M0 for MXFP4, E4M3 for NVFP4) and a global fp32 scale
    nf4        QLoRA's 4-bit NormalFloat: (N, K/2) uint8 codes, an absmax per block of 64 (double-quantized
               to 8 bits in blocks of 256)

A method (`lab.quant`, `lab.prune`, `lab.params`) writes these layouts and a kernel (`lab.kernels`) reads them; this
package imports nothing of `lab` but `lab.core`, so neither side imports the other to reach them.
"""

from lab.formats.blockwise import dequantize_blockwise, dynamic_map, nearest_code_table, quantize_blockwise
from lab.formats.fp4 import decode_fp4_scales, dequantize_fp4, e2m1_codes, e2m1_values, pack_fp4, unpack_fp4
from lab.formats.int4 import dequantize_int4, pack_int4, pack_int4_v2, unpack_int4, unpack_int4_v2
from lab.formats.nf4 import NF4Tensor, dequantize_nf4, nf4_bits_per_parameter, nf4_values, quantize_nf4
from lab.formats.sparse24 import (check_nm, compress, compressed_nbytes, decompress, index_bits, meta_shape, pack_bits,
                                  unpack_bits)

__all__ = [
    "dequantize_blockwise", "dynamic_map", "nearest_code_table", "quantize_blockwise",
    "NF4Tensor", "dequantize_nf4", "nf4_bits_per_parameter", "nf4_values", "quantize_nf4",
    "decode_fp4_scales", "dequantize_fp4", "e2m1_codes", "e2m1_values", "pack_fp4", "unpack_fp4",
    "dequantize_int4", "pack_int4", "pack_int4_v2", "unpack_int4", "unpack_int4_v2",
    "check_nm", "compress", "compressed_nbytes", "decompress", "index_bits", "meta_shape", "pack_bits", "unpack_bits",
]
