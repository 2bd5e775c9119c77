"""lab.quant.packing: a 4-bit QuantizedTensor → the int4 storage of lab.formats.int4, against its own codes.

References: the quantizer's codes (exact round trip through the packed bytes) and its dequantized weight,
rebuilt element by element from the stored scales and zeros.
"""

from __future__ import annotations

import pytest
import torch

from lab.formats.int4 import unpack_int4
from lab.quant import dequantize, pack_quantized_weight, quantize
from tests.kernels.test_int4 import _gen, dequantized_weight


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
    (lambda: pack_quantized_weight(torch.ones(2, 2)), TypeError, r"qt must be a QuantizedTensor"),
    (lambda: pack_quantized_weight(quantize(torch.randn(4, 32), 8, granularity="channel")), ValueError,
     r"4-bit, asymmetric.*bits=8"),
    (lambda: pack_quantized_weight(quantize(torch.randn(4, 32), 4, True, "channel")), ValueError, r"qmin=-8"),
    (lambda: pack_quantized_weight(quantize(torch.randn(4, 32), 4, granularity="channel", axis=1)), ValueError,
     r"axis=1"),
    (lambda: pack_quantized_weight(quantize(torch.randn(4, 32), 4)), ValueError, r"granularity='tensor'"),
])
def test_pack_quantized_weight_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
