"""Storage layouts shared by the compression methods and the kernels that read them.

    int4       two 4-bit codes per byte (v1: (K/2, N) uint8, group-interleaved) or four per 16-bit word
               (v2: (N, K/4) int16, planar within a group), with scales and zeros (K/g, N)
    sparse24   an N:M-sparse weight as its kept values and their 2-bit positions (2:4: (out, in/2) values,
               (out, in/8) uint8 metadata)

A method (`lab.quant`, `lab.prune`) writes these layouts and a kernel (`lab.kernels`) reads them; this
package imports nothing of `lab` but `lab.core`, so neither side imports the other to reach them.
"""

from lab.formats.int4 import dequantize_int4, pack_int4, pack_int4_v2, unpack_int4, unpack_int4_v2
from lab.formats.sparse24 import (check_nm, compress, compressed_nbytes, decompress, index_bits, meta_shape, pack_bits,
                                  unpack_bits)

__all__ = [
    "dequantize_int4", "pack_int4", "pack_int4_v2", "unpack_int4", "unpack_int4_v2",
    "check_nm", "compress", "compressed_nbytes", "decompress", "index_bits", "meta_shape", "pack_bits", "unpack_bits",
]
