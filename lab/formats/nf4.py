"""NF4, QLoRA's 4-bit NormalFloat (Dettmers et al. 2023), with its double-quantized block scales.

Levels. NF4 holds 16 values ℓ_0 < … < ℓ_15 in [−1, 1]: quantiles of N(0, 1), with an exact zero, dense near 0
where normal weights are dense (ideal quantile quantization of N(0, 1) gives each level an equal share; scaled
by each block's absmax, whose draw is extreme, the outer levels of a block receive fewer weights). With δ = 0.9677083
(the paper's offset: the outermost quantile, Φ⁻¹(δ) ≈ 1.848 standard deviations) and Φ⁻¹ the inverse
normal CDF (``torch.special.ndtri``),

    p_i = Φ⁻¹(δ + (½ − δ)·i/8),   i = 0 … 7      (8 positive levels)
    n_i = −Φ⁻¹(δ + (½ − δ)·i/7),  i = 0 … 6      (7 negative levels)
    ℓ = sort(p ∪ {0} ∪ n) / max p                 (ℓ_0 = −1, ℓ_7 = 0, ℓ_15 = 1)

One more positive level than negative ones, so that 0 is a level and both ±1 are reached. The steps
follow bitsandbytes' ``create_normal_map`` (the linspace in float32, Φ⁻¹ in float64, the division in
float32), which gives the paper's table bit for bit.

Blocks. W (N, K) is cut, row by row, into blocks of B consecutive input columns (B = ``block_size``, 64
by default, dividing K): N·K/B blocks in W's row-major order. Block j keeps its absmax a_j = max |w|
over its B weights; each weight w gets the code c of the level nearest to w / a_j (ties to the lower
level) and comes back as

    ŵ = a_j · ℓ_c.

Codes are packed two per byte in row-major order, the first of each pair in the high nibble
(bitsandbytes' layout): ``packed`` (N, K/2) uint8.

Double quantization. The N·K/B absmax values are quantized in turn: their mean μ is subtracted and
a − μ is stored as 8-bit codes of the signed dynamic map (`lab.formats.blockwise`) in blocks of
B₂ = ``dq_block`` = 256, with one fp32 absmax per block of 256; μ is kept in fp32. Dequantizing,
â = dequantize_blockwise(codes) + μ and ŵ = â_j · ℓ_c. (The codes c are chosen with the exact a_j.)

Storage, bits per weight (`nf4_bits_per_parameter`):

    b = 4 + 32/B                    fp32 absmax per block               4.5 at B = 64
    b = 4 + 8/B + 32/(B·B₂)         double-quantized absmax             ≈ 4.127 at B = 64, B₂ = 256

(the 32 bits of μ, once per tensor, aside), against 16 in bf16 and `lab.formats.int4`'s 4 + 2·16/g with
a bf16 scale and zero point per group of g.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from lab.core.checks import check_float_tensor, check_int, check_power_of_two, check_tensor
from lab.formats.blockwise import _quantize, dequantize_blockwise, dynamic_map, nearest_code_table

NF4_OFFSET = 0.9677083                      # δ of the module docstring (the paper's code)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def nf4_values() -> torch.Tensor:
    """The 16 NF4 levels ℓ (module docstring), sorted: (16,) float32, ℓ_0 = −1, ℓ_7 = 0, ℓ_15 = 1."""
    def quantiles(n: int) -> torch.Tensor:                     # Φ⁻¹ at n points from δ towards ½ (½ left out)
        return torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, n + 1, dtype=torch.float32)[:-1].double())

    levels = torch.cat([quantiles(8), torch.zeros(1, dtype=torch.float64), -quantiles(7)]).float().sort().values
    return levels / levels.max()


def _check_block(block_size: int, K: int) -> None:
    check_int("block_size", block_size)
    if block_size % 2 or K % block_size:
        raise ValueError(f"block_size={block_size} is not allowed; use an even divisor of K={K} (W's columns; "
                         "a block's codes fill whole bytes)")


@dataclasses.dataclass(frozen=True, eq=False)
class NF4Tensor:
    """A weight W (N, K) in NF4 (module docstring), as `quantize_nf4` returns it.

    packed         (N, K/2) uint8: the codes c, two per byte, the first of a pair in the high nibble
    absmax         (N·K/B,) float32 a, or uint8 codes of a − μ with double quantization
    block_size     B, an even divisor of K
    absmax_scales  (⌈N·K/(B·B₂)⌉,) float32: the dynamic map's absmax per block of B₂ (double quantization)
    absmax_mean    () float32 μ (double quantization only)
    dq_block       B₂, a power of two (double quantization only)
    """

    packed: torch.Tensor
    absmax: torch.Tensor
    block_size: int
    absmax_scales: torch.Tensor | None = None
    absmax_mean: torch.Tensor | None = None
    dq_block: int | None = None

    def __post_init__(self) -> None:
        check_tensor("packed", self.packed, 2, (torch.uint8,))
        N, K = self.shape
        _check_block(self.block_size, K)
        n = N * K // self.block_size
        check_tensor("absmax", self.absmax, 1, (torch.uint8,) if self.double_quant else (torch.float32,))
        if self.absmax.numel() != n:
            raise ValueError(f"absmax must hold N·K/block_size = {n} values, got {self.absmax.numel()}")
        extras = (self.absmax_scales, self.absmax_mean, self.dq_block)
        if not self.double_quant:
            if any(e is not None for e in extras):
                raise ValueError("absmax_scales, absmax_mean and dq_block go together with uint8 absmax codes "
                                 "(double quantization); give all three or none")
            return
        check_power_of_two("dq_block", self.dq_block)
        check_tensor("absmax_scales", self.absmax_scales, 1, (torch.float32,))
        check_tensor("absmax_mean", self.absmax_mean, 0, (torch.float32,))
        if self.absmax_scales.numel() != -(-n // self.dq_block):
            raise ValueError(f"absmax_scales must hold ⌈{n} / dq_block⌉ = {-(-n // self.dq_block)} values, "
                             f"got {self.absmax_scales.numel()}")

    @property
    def double_quant(self) -> bool:
        """Whether the absmax values are double-quantized (stored as uint8 codes)."""
        return self.absmax.dtype == torch.uint8

    @property
    def shape(self) -> tuple[int, int]:
        """(N, K), W's shape."""
        return self.packed.shape[0], 2 * self.packed.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes of every stored tensor: N·K/2 + 4·N·K/B, or N·K/2 + N·K/B + 4·⌈N·K/(B·B₂)⌉ + 4."""
        tensors = (self.packed, self.absmax, self.absmax_scales, self.absmax_mean)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@functools.cache
def _absmax_table() -> tuple[torch.Tensor, torch.Tensor]:
    """`nearest_code_table` of the signed dynamic map, built once (it takes longer than quantizing a layer)."""
    return nearest_code_table(dynamic_map(True))


@functools.cache
def _byte_values() -> torch.Tensor:
    """(256, 2) float32: the two levels a packed byte b holds, (ℓ[b >> 4], ℓ[b & 15]), one lookup per byte."""
    levels = nf4_values()
    return torch.stack([levels.repeat_interleave(16), levels.repeat(16)], dim=1)


def _midpoints(device: torch.device) -> torch.Tensor:
    """(ℓ_k + ℓ_{k+1}) / 2, the 15 decision boundaries between the levels, float32."""
    levels = nf4_values().to(device)
    return (levels[1:] + levels[:-1]) / 2


def quantize_nf4(W: torch.Tensor, block_size: int = 64, double_quant: bool = True,
                 dq_block: int = 256) -> NF4Tensor:
    """W (N, K), a floating tensor with finite entries (fp16, bf16, fp32 or fp64), in NF4 (module docstring).

    ``block_size`` B: an even divisor of K; ``double_quant``: quantize the absmax values to 8 bits in blocks
    of ``dq_block`` B₂ (a power of two). The codes are chosen in float32 with the exact absmax.
    """
    check_float_tensor("W", W, 2, FLOAT_DTYPES)
    if not W.numel():
        raise ValueError(f"W is empty (shape {tuple(W.shape)}); give at least one weight")
    N, K = W.shape
    _check_block(block_size, K)
    if not isinstance(double_quant, bool):
        raise TypeError(f"double_quant must be a bool, got {double_quant!r} ({type(double_quant).__name__})")
    check_power_of_two("dq_block", dq_block)
    blocks = W.detach().float().reshape(-1, block_size)
    absmax = blocks.abs().amax(dim=1)
    scaled = blocks / torch.where(absmax > 0, absmax, 1.0).unsqueeze(1)
    codes = torch.bucketize(scaled, _midpoints(W.device)).to(torch.uint8).view(N, K)
    packed = (codes[:, 0::2] << 4) | codes[:, 1::2]
    if not double_quant:
        return NF4Tensor(packed, absmax, block_size)
    mean = absmax.mean()
    absmax_codes, absmax_scales = _quantize(absmax - mean, dynamic_map(True), dq_block, _absmax_table())
    return NF4Tensor(packed, absmax_codes, block_size, absmax_scales, mean, dq_block)


def _absmax(q: NF4Tensor) -> torch.Tensor:
    """The absmax a of every block, float32 (N·K/B,): stored, or â = dequantized codes + μ."""
    if not q.double_quant:
        return q.absmax
    code = dynamic_map(True)
    return dequantize_blockwise(q.absmax, q.absmax_scales, code, q.dq_block, q.absmax.shape) + q.absmax_mean


def dequantize_nf4(q: NF4Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Ŵ (N, K) of ``dtype`` (fp16, bf16, fp32 or fp64): ŵ = a_j · ℓ_c, formed in float32 then cast."""
    if not isinstance(q, NF4Tensor):
        raise TypeError(f"q must be an NF4Tensor (quantize_nf4's result), got {type(q).__name__}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch dtype such as torch.bfloat16, got {dtype!r}")
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype={dtype} is not allowed; use one of {FLOAT_DTYPES}")
    values = _byte_values().to(q.packed.device)[q.packed.long()].view(-1, q.block_size) * _absmax(q).unsqueeze(1)
    return values.view(q.shape).to(dtype)


def nf4_bits_per_parameter(block_size: int = 64, double_quant: bool = True, dq_block: int = 256) -> float:
    """Bits per weight of NF4 with blocks of B = ``block_size`` (a positive even int):

        b = 4 + 32/B                   without double quantization (fp32 absmax per block; 4.5 at B = 64)
        b = 4 + 8/B + 32/(B·B₂)        with it, B₂ = ``dq_block`` (a power of two; ≈ 4.127 at B = 64, B₂ = 256)

    The mean μ (32 bits per tensor) and the rounding up of the last block of B₂ are left out:
    `NF4Tensor.nbytes` of an (N, K) weight is N·K·b/8, plus 4 bytes, when B·B₂ divides N·K.
    """
    check_int("block_size", block_size)
    if block_size % 2:
        raise ValueError(f"block_size={block_size} is not allowed; use an even block size (codes pack two per byte)")
    if not isinstance(double_quant, bool):
        raise TypeError(f"double_quant must be a bool, got {double_quant!r} ({type(double_quant).__name__})")
    if not double_quant:
        return 4 + 32 / block_size
    check_power_of_two("dq_block", dq_block)
    return 4 + 8 / block_size + 32 / (block_size * dq_block)
