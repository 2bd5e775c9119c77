"""A 4-bit quantized weight → the int4 storage of `lab.formats.int4` (v1 or v2 layout) that `Int4Linear` keeps.

The quantizer (`lab.quant.affine`, RTN or GPTQ) gives the codes q (N, K) and one (s, z) per output row and
group of g input columns, s and z of shape (N, K/g); the storage is the packed codes — (K/2, N) uint8 in the v1
layout, (N, K/4) int16 in the v2 layout — and scales, zeros transposed to (K/g, N) float32, so that
Ŵ = s·(q − z) (`lab.formats.int4.dequantize_int4`).
"""

from __future__ import annotations

import torch

from lab.core.checks import check_choice
from lab.formats.int4 import pack_int4, pack_int4_v2
from lab.quant.affine import QuantizedTensor


def pack_quantized_weight(qt: QuantizedTensor, name: str = "qt",
                          layout: str = "v1") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """A 4-bit asymmetric per-channel or group-wise (axis 0) QuantizedTensor of W (N, K) →
    (packed, scales (K/g, N) float32, zeros (K/g, N) float32, g); packed in ``layout``: "v1" (K/2, N) uint8
    (`pack_int4`) or "v2" (N, K/4) int16 (`pack_int4_v2`); ``name``: the caller's argument."""
    check_choice("layout", layout, ("v1", "v2"))
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"{name} must be a QuantizedTensor, got {type(qt).__name__}")
    if qt.bits != 4 or qt.qmin != 0 or qt.axis != 0 or qt.granularity not in ("channel", "group") \
            or len(qt.shape) != 2:
        raise ValueError(f"{name} must be a 2-D, 4-bit, asymmetric (qmin = 0) tensor quantized per "
                         f"channel or group along axis 0; got bits={qt.bits}, qmin={qt.qmin}, "
                         f"granularity={qt.granularity!r}, axis={qt.axis}, shape={tuple(qt.shape)}")
    N, K = qt.shape
    group_size = qt.group_size or K
    scales = qt.scale.reshape(N, -1).T.contiguous().float()
    zeros = qt.zero_point.reshape(N, -1).T.contiguous().float()
    pack = pack_int4 if layout == "v1" else pack_int4_v2
    return pack(qt.qdata, group_size), scales, zeros, group_size
