"""Two int4 layouts of a quantized weight: the codes of W (N, K), packed for the kernels of `lab.kernels.int4`.

A weight W (N, K) quantized to unsigned 4-bit codes q ∈ [0, 15] with one (scale, zero) per row and per
group of g input columns has Ŵ = s·(q − z); scales and zeros are stored as (K/g, N) float tensors, zeros
holding the integer zero points. Per-channel quantization is the case g = K.

v1 (`pack_int4`, read by the v1 kernel): W stored transposed and packed *within each group*: group G covers
the input columns k = G·g … G·g + g − 1 and fills g/2 bytes per output row n,

    packed[G·g/2 + i, n] = q[n, G·g + i]  |  q[n, G·g + g/2 + i] << 4,       i = 0 … g/2 − 1,

so packed is (K/2, N) uint8: the low nibble holds the first half of the group, the high nibble the
second half. Why this order: a kernel tile of packed rows r … r+B−1 (B dividing g/2) lies inside one
group, unpacks into two dense tiles of input columns (low: k = r + G·g/2 + i, high: the same plus g/2)
with two shifts and no shuffles, and needs one scale row for both. Transposed (K/2, N) so that a row
of the tile is N contiguous bytes (coalesced loads).

v2 (`pack_int4_v2`, read by the v2 decode GEMV): row-major (N, K/4) int16, four codes per 16-bit word,
*planar within a group*:

    word[n, G·g/4 + j] = Σ_p q[n, G·g + p·g/4 + j] << 4p,      p = 0 … 3,  j = 0 … g/4 − 1,

so nibble p of g/4 consecutive words is the dense plane p of the group (g/4 consecutive columns), and a
row's words are contiguous (16-byte vector loads). Same bytes as v1, other order.
"""

from __future__ import annotations

import torch

from lab.core.checks import check_int, check_tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_group(K: int, group_size: int) -> None:
    check_int("group_size", group_size, 2)
    if group_size % 2 or K % group_size:
        raise ValueError(f"group_size={group_size} is not allowed; use an even divisor of in_features={K}")


def _check_codes(q: torch.Tensor, group_size: int) -> None:
    """q: a 2-D integer tensor of 4-bit codes in [0, 15] whose width the group size divides."""
    if not torch.is_tensor(q) or q.dtype.is_floating_point or q.dtype == torch.bool or q.dim() != 2:
        raise TypeError(f"q must be a 2-D integer tensor, got "
                        f"{f'{q.dtype} {tuple(q.shape)}' if torch.is_tensor(q) else type(q).__name__}")
    _check_group(q.shape[1], group_size)
    if q.numel() and (q.min() < 0 or q.max() > 15):
        raise ValueError(f"q must hold 4-bit codes in [0, 15], got values in [{int(q.min())}, {int(q.max())}]")


def _check_packed(packed: torch.Tensor, dtype: torch.dtype) -> None:
    """packed: a 2-D tensor of ``dtype`` (uint8 for `pack_int4`'s layout, int16 for `pack_int4_v2`'s)."""
    if not torch.is_tensor(packed) or packed.dtype != dtype or packed.dim() != 2:
        raise TypeError(f"packed must be a 2-D {str(dtype).removeprefix('torch.')} tensor, got "
                        f"{f'{packed.dtype} {tuple(packed.shape)}' if torch.is_tensor(packed) else type(packed).__name__}")


def pack_int4(q: torch.Tensor, group_size: int) -> torch.Tensor:
    """Codes q (N, K) with values in [0, 15] (any integer dtype) → packed (K/2, N) uint8 in the v1 layout
    (module docstring)."""
    _check_codes(q, group_size)
    N, K = q.shape
    groups = q.to(torch.uint8).reshape(N, K // group_size, 2, group_size // 2)   # (N, G, half, i)
    packed = groups[:, :, 0] | (groups[:, :, 1] << 4)                            # (N, G, g/2)
    return packed.reshape(N, K // 2).T.contiguous()


def unpack_int4(packed: torch.Tensor, group_size: int) -> torch.Tensor:
    """Packed (K/2, N) uint8 → codes q (N, K) uint8; the exact inverse of `pack_int4`."""
    _check_packed(packed, torch.uint8)
    half_k, N = packed.shape
    _check_group(2 * half_k, group_size)
    rows = packed.T.reshape(N, 2 * half_k // group_size, 1, group_size // 2)
    return torch.cat([rows & 0xF, rows >> 4], dim=2).reshape(N, 2 * half_k)


def pack_int4_v2(q: torch.Tensor, group_size: int) -> torch.Tensor:
    """Codes q (N, K) in [0, 15] → (N, K/4) int16 in the v2 layout (module docstring)."""
    _check_codes(q, group_size)
    if group_size % 4:
        raise ValueError(f"group_size={group_size} is not allowed; the v2 layout needs a multiple of 4")
    N, K = q.shape
    planes = q.to(torch.int32).reshape(N, K // group_size, 4, group_size // 4)      # (N, G, p, j)
    words = sum(planes[:, :, p] << (4 * p) for p in range(4))                       # (N, G, g/4) in [0, 2^16)
    return (words - (words >= 1 << 15).to(torch.int32) * (1 << 16)).to(torch.int16).reshape(N, K // 4)


def unpack_int4_v2(packed: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N, K/4) int16 of `pack_int4_v2` → codes q (N, K) uint8; its exact inverse."""
    _check_packed(packed, torch.int16)
    N, quarter_k = packed.shape
    _check_group(4 * quarter_k, group_size)
    words = packed.to(torch.int32).reshape(N, 4 * quarter_k // group_size, 1, group_size // 4) & 0xFFFF
    return torch.cat([(words >> (4 * p)) & 0xF for p in range(4)], dim=2).reshape(N, 4 * quarter_k).to(torch.uint8)


def dequantize_int4(packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                    group_size: int) -> torch.Tensor:
    """Ŵ = s·(q − z), (N, K) float32, from packed codes in either layout — v1 (K/2, N) uint8 or v2 (N, K/4)
    int16, told apart by the dtype — and scales, zeros (K/g, N)."""
    if not (torch.is_tensor(packed) and packed.dtype in (torch.uint8, torch.int16)):
        raise TypeError("packed must be a uint8 (K/2, N) tensor of pack_int4 or an int16 (N, K/4) tensor of "
                        f"pack_int4_v2, got {packed.dtype if torch.is_tensor(packed) else type(packed).__name__}")
    unpack = unpack_int4_v2 if packed.dtype == torch.int16 else unpack_int4
    q = unpack(packed, group_size).float()                                   # (N, K)
    for name, t in (("scales", scales), ("zeros", zeros)):                   # (K/g, 1) would broadcast silently
        if tuple(check_tensor(name, t, 2, FLOAT_DTYPES).shape) != (q.shape[1] // group_size, q.shape[0]):
            raise ValueError(f"{name} must have shape (K/g, N) = {(q.shape[1] // group_size, q.shape[0])}, "
                             f"got {tuple(t.shape)}")
    s = scales.float().T.repeat_interleave(group_size, dim=1)
    z = zeros.float().T.repeat_interleave(group_size, dim=1)
    return (q - z) * s
