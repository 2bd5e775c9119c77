"""FP4 (E2M1) weights as a GPU kernel reads them: 4-bit codes two per byte, one 8-bit scale per block of a row.

Codes. An E2M1 code c ∈ {0, …, 15} holds a sign bit s = bit 3, a 2-bit exponent field e = bits 2–1 (bias 1) and
a mantissa bit m = bit 0 (OCP MX v1.0 §5.3.3):

    v(c) = (−1)^s · 2^(e − 1) · (1 + m/2)   for e > 0,        v(c) = (−1)^s · m/2   for e = 0 (subnormal),

so codes 0 … 7 are 0, 0.5, 1, 1.5, 2, 3, 4, 6 and codes 8 … 15 their negatives (code 8 is −0).

Packing (`pack_fp4`). Codes q (N, K) become (N, K/2) uint8, row-major, the LOW nibble holding the even column:

    packed[n, j] = q[n, 2j]  |  q[n, 2j + 1] << 4,       j = 0 … K/2 − 1,

the storage order of packed ``e2m1x2`` data (the lower-index element in the low nibble) — the opposite of
bitsandbytes' NF4 (`lab.formats.nf4`), whose first code is the high nibble.

Scales. Row n's columns k = B·b … B·b + B − 1 form block b (B = K / scales.shape[1]: 32 for MXFP4, 16 for NVFP4),
with one uint8 per block in ``scales`` (N, K/B) and one float32 global scale s_g for the tensor:

    "e8m0" (MXFP4):  S = 2^(scales[n, b] − 127), the byte being E8M0's biased exponent (0xFF is NaN), s_g = 1
    "e4m3" (NVFP4):  S = the E4M3 number whose bit pattern is scales[n, b] (``torch.float8_e4m3fn``)

    Ŵ[n, k] = v(q[n, k]) · S[n, k // B] · s_g                                      (`dequantize_fp4`)

Bytes: N·K/2 for the codes, N·K/B for the scales, 4 for s_g: 4 + 8/B bits per weight plus 32/(N·K).
`lab.quant.mx.fp4_weight` writes this layout from a quantized weight; a kernel (`lab.kernels`) reads it.
"""

from __future__ import annotations

import torch

from lab.core.checks import check_choice, check_divisor, check_number, check_tensor

SCALE_FORMATS = ("e8m0", "e4m3")
E8M0_BIAS = 127


def e2m1_values() -> torch.Tensor:
    """v(c) for the 16 codes c = 0 … 15 (module docstring), from the bit fields: (16,) float32."""
    c = torch.arange(16)
    s, e, m = c >> 3, (c >> 1) & 3, (c & 1).float()
    magnitude = torch.where(e > 0, torch.exp2(e.float() - 1) * (1 + m / 2), m / 2)
    return torch.where(s == 1, -magnitude, magnitude)


def e2m1_codes(values: torch.Tensor) -> torch.Tensor:
    """The code c of each value of ``values`` (any shape, floating, every entry one of ±{0, 0.5, 1, 1.5, 2, 3,
    4, 6}): uint8 of the same shape, the sign bit set for negative values and −0."""
    check_tensor("values", values)
    if not values.is_floating_point():
        raise TypeError(f"values must be a floating-point tensor, got {values.dtype}")
    magnitudes = e2m1_values()[:8].to(values.device)
    index = torch.searchsorted(magnitudes, values.abs().float().contiguous()).clamp(max=7)
    if not torch.equal(magnitudes[index], values.abs().float()):
        off = values[magnitudes[index] != values.abs().float()][:3].tolist()
        raise ValueError(f"values must hold E2M1 values ±(0, 0.5, 1, 1.5, 2, 3, 4, 6), got {off} among them")
    return (index | (torch.signbit(values).long() << 3)).to(torch.uint8)


def _check_codes(q: torch.Tensor) -> None:
    """q: a 2-D uint8 tensor of codes in [0, 15] with an even number of columns."""
    check_tensor("q", q, 2, (torch.uint8,))
    if q.shape[1] % 2:
        raise ValueError(f"q must have an even number of columns (two codes per byte), got shape {tuple(q.shape)}")
    if q.numel() and q.max() > 15:
        raise ValueError(f"q must hold 4-bit codes in [0, 15], got a maximum of {int(q.max())}")


def pack_fp4(q: torch.Tensor) -> torch.Tensor:
    """Codes q (N, K) uint8 in [0, 15], K even → (N, K/2) uint8, q[n, 2j] in the low nibble of byte j and
    q[n, 2j + 1] in its high nibble (module docstring)."""
    _check_codes(q)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """(N, K/2) uint8 of `pack_fp4` → codes q (N, K) uint8; its exact inverse."""
    check_tensor("packed", packed, 2, (torch.uint8,))
    return torch.stack([packed & 0xF, packed >> 4], dim=2).reshape(packed.shape[0], 2 * packed.shape[1])


def decode_fp4_scales(scales: torch.Tensor, scale_format: str) -> torch.Tensor:
    """The block scales S (float32, ``scales``' shape) of uint8 ``scales``: 2^(byte − 127) for "e8m0" (255 →
    NaN), the E4M3 number of the bit pattern for "e4m3"."""
    check_tensor("scales", scales, dtypes=(torch.uint8,))
    check_choice("scale_format", scale_format, SCALE_FORMATS)
    if scale_format == "e4m3":
        return scales.view(torch.float8_e4m3fn).float()
    S = torch.exp2(scales.double() - E8M0_BIAS)
    return torch.where(scales == 255, torch.nan, S).float()


def dequantize_fp4(packed: torch.Tensor, scales: torch.Tensor, global_scale: float = 1.0,
                   scale_format: str = "e8m0") -> torch.Tensor:
    """Ŵ[n, k] = v(q[n, k]) · S[n, k // B] · s_g (module docstring): (N, K) float32 from packed codes (N, K/2)
    uint8, ``scales`` (N, K/B) uint8 and the global scale s_g = ``global_scale`` (a positive float32 number).
    The reference a kernel reading this layout is checked against (products in float64, rounded once)."""
    q = unpack_fp4(packed)
    check_tensor("scales", scales, 2, (torch.uint8,))
    check_number("global_scale", global_scale, low=0.0, closed=(False, True))
    N, K = q.shape
    if scales.shape[0] != N or scales.shape[1] == 0:
        raise ValueError(f"scales must have shape (N, K/B) = ({N}, K/B) for packed of shape {tuple(packed.shape)}, "
                         f"got {tuple(scales.shape)}")
    check_divisor("scales.shape[1]", scales.shape[1], K, "K")
    S = decode_fp4_scales(scales, scale_format).double().repeat_interleave(K // scales.shape[1], dim=1)
    return (e2m1_values().double()[q.long()] * S * global_scale).float()
