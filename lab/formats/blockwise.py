"""Block-wise dynamic quantization (Dettmers et al. 2022): 8-bit codes of a dynamic map, one absmax per block.

Block-wise quantization. A tensor x is flattened and cut into blocks of B elements (B = block_size, a power
of two; the last block may be shorter). Each block keeps its absmax a = max|x| in fp32 and each element one
byte q, the index of the map value nearest to x / a:

    q = argmin_k |x / a − code[k]|,        x̂ = a · code[q]          (a = 0: q = index of 0, x̂ = 0)

An outlier spoils the precision of its own block only, not of the whole tensor. The nearest code is
found without a search over the map: a lookup on the top 16 bits of the float32 x / a (`nearest_code_table`)
gives the same index as ``torch.bucketize`` on the 255 midpoints between neighbouring codes, five times
faster on a CPU.

Dynamic (tree) map, 256 values in [−1, 1]. Read the 8 bits as: a sign bit, then E zero bits (the
decimal exponent, value scale 10^−E), then an indicator bit 1, then the remaining F bits a linear
fraction: the 2^F midpoints of 2^F equal intervals of [0.1, 1],

    value = ± 10^−E · (0.1 + 0.9·(j + ½) / 2^F),    j = 0 … 2^F − 1,   E = 0 … 6,   F = 6 − E

(127 magnitudes per sign; all-zero bits = 0; the pattern of "−0" is spent on +1.0, so a block's
largest positive value is stored exactly). The exponent trades precision for range: values in
[0.1, 1] get 6 fraction bits (64 levels), those near 10^−6 none, and the map spans 7 decades. The
unsigned map (for x ≥ 0) spends the sign bit on the fraction, F = 7 − E: 254 positive values, 0, 1.0.
This is bitsandbytes' ``create_dynamic_map``. Users: `lab.params.adam8bit` (8-bit optimizer states, signed
map for m, unsigned for v) and `lab.formats.nf4` (the double-quantized absmax of NF4 blocks, signed map).
"""

from __future__ import annotations

import math

import torch

from lab.core.checks import check_float_tensor, check_power_of_two, check_tensor


def dynamic_map(signed: bool, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 256 sorted values of the dynamic tree map (module docstring): (256,) of ``dtype``
    (float32, the optimizer's; float64 for a reference)."""
    if not isinstance(signed, bool):
        raise TypeError(f"signed must be a bool, got {signed!r} ({type(signed).__name__})")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype={dtype!r} is not allowed; allowed: torch.float32, torch.float64")
    values = [0.0, 1.0]
    for E in range(7):
        n_fraction = 2 ** (6 - E + (0 if signed else 1))
        for j in range(n_fraction):
            value = 10.0 ** -E * (0.1 + 0.9 * (j + 0.5) / n_fraction)
            values += [value, -value] if signed else [value]
    return torch.tensor(sorted(values), dtype=dtype)


def _check_code(code) -> torch.Tensor:
    check_float_tensor("code", code, 1, (torch.float32,))
    if code.numel() != 256 or not bool((code[1:] > code[:-1]).all()):
        raise ValueError(f"code must hold 256 increasing values (a dynamic_map), got shape {tuple(code.shape)}")
    return code


def nearest_code_table(code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lookup tables of the nearest-code search over ``code`` (256 increasing float32 values):
    (below (65536,) int32, inside (65536, K) float32).

    Cell c holds the float32 numbers whose top 16 bits (sign, exponent, 7 mantissa bits) are c: an
    interval of relative width 2⁻⁷. below[c] counts the midpoints μ_k = (code[k] + code[k+1]) / 2 under
    the cell, inside[c] lists those in it, padded with +inf (K = 1 for both dynamic maps: their
    midpoints lie farther apart than a cell is wide). For x in cell c,

        q = below[c] + Σ_k [inside[c, k] < x] = #{k : μ_k < x},

    ``torch.bucketize(x, μ)``: the nearest code, ties to the lower one.
    """
    _check_code(code)
    mid = (code[1:] + code[:-1]) / 2
    patterns = torch.arange(65536, dtype=torch.int32, device=code.device) << 16
    ends = torch.stack([patterns.view(torch.float32), (patterns | 0xFFFF).view(torch.float32)])
    low, high = ends.amin(0), ends.amax(0)                  # a negative cell runs downwards
    below = torch.bucketize(low, mid)
    n_inside = torch.bucketize(high, mid, right=True) - below
    K = max(1, int(n_inside[torch.isfinite(low) & torch.isfinite(high)].max()))
    inside = torch.full((65536, K), math.inf, device=code.device)
    for k in range(K):
        inside[:, k] = torch.where(k < n_inside, mid[(below + k).clamp(max=mid.numel() - 1)], math.inf)
    return below.to(torch.int32), inside


def _nearest(scaled: torch.Tensor, table: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """`nearest_code_table`'s lookup: the code index of each float32 element, int32 of its shape."""
    below, inside = (t.to(scaled.device) for t in table)
    cell = (scaled.view(torch.int32) >> 16) & 0xFFFF
    q = below.index_select(0, cell.reshape(-1)).view(scaled.shape)
    for k in range(inside.shape[1]):
        q += inside[:, k].index_select(0, cell.reshape(-1)).view(scaled.shape) < scaled
    return q


def quantize_blockwise(x: torch.Tensor, code: torch.Tensor,
                       block_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-code block-wise quantization of x (any shape, floating).

    Returns codes uint8 (N,) (x flattened, N = numel) and absmax float32 (⌈N / B⌉,).
    Ties between two codes go to the lower one.
    """
    check_float_tensor("x", x)
    _check_code(code)
    check_power_of_two("block_size", block_size)
    return _quantize(x, code, block_size)


def _quantize(x: torch.Tensor, code: torch.Tensor, B: int,
              table: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.detach().reshape(-1).float()
    n = flat.numel()
    blocks = torch.nn.functional.pad(flat, (0, -n % B)).view(-1, B)
    absmax = blocks.abs().amax(dim=1)
    scaled = blocks / torch.where(absmax > 0, absmax, 1.0).unsqueeze(1)
    q = _nearest(scaled, nearest_code_table(code.to(x.device)) if table is None else table)
    return q.reshape(-1)[:n].to(torch.uint8), absmax


def dequantize_blockwise(codes: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, block_size: int,
                         shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """x̂ = absmax[block] · code[codes], float32 of ``shape`` (the inverse of `quantize_blockwise`)."""
    check_tensor("codes", codes, 1, (torch.uint8,))
    check_tensor("absmax", absmax, 1, (torch.float32,))
    _check_code(code)
    check_power_of_two("block_size", block_size)
    n = codes.numel()
    if math.prod(shape) != n or absmax.numel() != -(-n // block_size):
        raise ValueError(f"shape={tuple(shape)} and absmax ({absmax.numel()} blocks) do not match codes "
                         f"({n} elements, block_size={block_size})")
    return _dequantize(codes, absmax, code, block_size, shape)


def _dequantize(codes: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, B: int,
                shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    values = code.to(codes.device)[codes.long()]
    return (values * absmax.repeat_interleave(B)[:codes.numel()]).view(shape)
