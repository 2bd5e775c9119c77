"""8-bit AdamW: m and v stored as block-wise dynamic 8-bit codes (Dettmers et al. 2022).

Block-wise quantization. A state tensor x is flattened and cut into blocks of B elements (B =
block_size = 2048, a power of two; the last block may be shorter). Each block keeps its absmax
a = max|x| in fp32 and each element one byte q, the index of the map value nearest to x / a:

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
unsigned map (for v ≥ 0) spends the sign bit on the fraction, F = 7 − E: 254 positive values, 0, 1.0.
This is bitsandbytes' ``create_dynamic_map`` (signed for m, unsigned for v). The optimizer keeps
the map in float32; `blockwise_error_vs_float64` measures its quantizer against the same steps in
float64.

AdamW step t (g gradient, λ weight decay, all in fp32; only the stored m, v are 8-bit):

    m, v ← dequantize(stored m, v)
    m ← β1·m + (1 − β1)·g,   v ← β2·v + (1 − β2)·g²
    W ← W·(1 − lr·λ) − lr · (m / (1 − β1^t)) / (√(v / (1 − β2^t)) + ε)
    stored m, v ← quantize(m, v)          (the update used the fp32 m, v of this step)

weight_decay = 0 is Adam. Unlike bitsandbytes (which keeps tensors under 4,096 elements in 32 bit),
every parameter's state here is 8-bit.

State per parameter of N elements, K = ⌈N / B⌉ blocks: "m_codes", "v_codes" uint8 (N,) and
"m_absmax", "v_absmax" fp32 (K,): 2·N + 8·K bytes (AdamW fp32: 8·N). The step t is a Python int
(no tensor). The two maps (2 × 256 fp32 = 2 KiB) are kept once on the optimizer, not per parameter,
and are not part of ``optimizer.state``; `adam8bit_state_bytes` does not count them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from lab.core.checks import check_float_tensor, check_int, check_number, check_power_of_two, check_tensor


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


def blockwise_error_vs_float64(x: torch.Tensor, signed: bool, block_size: int = 2048) -> dict[str, float]:
    """`quantize_blockwise` + `dequantize_blockwise` of x with ``dynamic_map(signed)`` against the same
    steps in float64 (x, a = max|x| per block and the map in float64), in units of each block's a:

        "quantize":   max (|x − x̂| − |x − x̂₆₄|) / a,  x̂₆₄ = a·code₆₄ nearest to x / a: how much farther
                      the chosen code is than the nearest one (0 when it is a nearest one, up to rounding)
        "dequantize": max |x̂ − a·code₆₄[q]| / a for the chosen codes q: dequantization's rounding

    x̂ is the float32 result; elements of an all-zero block count 0 in both. ``x``: a non-empty floating
    tensor with finite entries, ≥ 0 for the unsigned map (``signed=False``, the map of v = g²).
    """
    code = dynamic_map(signed)
    check_float_tensor("x", x)
    if not x.numel():
        raise ValueError(f"x is empty (shape {tuple(x.shape)}); give at least one element")
    if not signed and bool((x < 0).any()):
        raise ValueError(f"x has negative entries (min {x.min().item():g}), which the unsigned map (signed=False) "
                         "cannot hold; use signed=True or x ≥ 0 (such as g²)")
    q, absmax = quantize_blockwise(x, code, block_size)
    x_hat = dequantize_blockwise(q, absmax, code, block_size, x.shape).reshape(-1).double()
    flat, code64 = x.detach().reshape(-1).double(), dynamic_map(signed, torch.float64).to(x.device)
    n = flat.numel()
    blocks = torch.nn.functional.pad(flat, (0, -n % block_size)).view(-1, block_size)
    a = blocks.abs().amax(dim=1).repeat_interleave(block_size)[:n]
    a = torch.where(a > 0, a, 1.0)
    scaled = flat / a
    above = torch.searchsorted(code64, scaled).clamp_(1, code64.numel() - 1)   # code64[above − 1] ≤ x / a
    nearest = torch.minimum(scaled - code64[above - 1], code64[above] - scaled).abs()
    return {"quantize": ((flat - x_hat).abs() / a - nearest).max().item(),
            "dequantize": ((x_hat - a * code64[q.long()]).abs() / a).max().item()}


class Adam8bit(torch.optim.Optimizer):
    """AdamW with 8-bit block-wise dynamic m and v (module docstring).

    ``lr`` ≥ 0, ``betas`` (β1, β2) in [0, 1), ``eps`` ε > 0, ``weight_decay`` λ ≥ 0 (decoupled, as
    AdamW; 0 = Adam), ``block_size`` B a positive power of two.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, block_size: int = 2048):
        if isinstance(params, torch.nn.Module):
            raise TypeError(f"params must be an iterable of parameters or param groups such as model.parameters(), "
                            f"got the module {type(params).__name__}")
        check_number("lr", lr, 0.0)
        if not (isinstance(betas, tuple) and len(betas) == 2):
            raise TypeError(f"betas must be a tuple (beta1, beta2), got {betas!r}")
        check_number("betas[0]", betas[0], 0.0, 1.0, closed=(True, False))
        check_number("betas[1]", betas[1], 0.0, 1.0, closed=(True, False))
        check_number("eps", eps, 0.0, closed=(False, True))
        check_number("weight_decay", weight_decay, 0.0)
        check_power_of_two("block_size", block_size)
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "block_size": block_size}
        super().__init__(params, defaults)
        self.code_m, self.code_v = dynamic_map(signed=True), dynamic_map(signed=False)
        self.table_m, self.table_v = nearest_code_table(self.code_m), nearest_code_table(self.code_v)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One AdamW update of every parameter that has a gradient; m, v re-quantized after it."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd, B = (group[k] for k in ("lr", "betas", "eps", "weight_decay", "block_size"))
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Adam8bit does not support sparse gradients")
                g, state = p.grad.float(), self.state[p]
                if not state:
                    state["step"] = 0
                    zeros = torch.zeros_like(g)
                    state["m_codes"], state["m_absmax"] = _quantize(zeros, self.code_m, B, self.table_m)
                    state["v_codes"], state["v_absmax"] = _quantize(zeros, self.code_v, B, self.table_v)
                state["step"] += 1
                t = state["step"]
                m = _dequantize(state["m_codes"], state["m_absmax"], self.code_m, B, g.shape)
                v = _dequantize(state["v_codes"], state["v_absmax"], self.code_v, B, g.shape)
                m.mul_(beta1).add_(g, alpha=1.0 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
                denom = (v.sqrt() / math.sqrt(1.0 - beta2 ** t)).add_(eps)
                p.mul_(1.0 - lr * wd)
                p.sub_((m / denom).mul_(lr / (1.0 - beta1 ** t)).to(p.dtype))
                state["m_codes"], state["m_absmax"] = _quantize(m, self.code_m, B, self.table_m)
                state["v_codes"], state["v_absmax"] = _quantize(v, self.code_v, B, self.table_v)
        return loss


def adam8bit_state_bytes(shapes: Iterable[tuple[int, ...]], block_size: int = 2048) -> int:
    """Bytes of `Adam8bit`'s state tensors for parameters of these shapes: Σ 2·N + 8·⌈N / B⌉.

    N = numel (1 for a 0-dim parameter, whose codes are stored flat as (1,)); the two shared maps
    are not in ``optimizer.state`` and not counted.
    """
    check_power_of_two("block_size", block_size)
    total = 0
    for i, shape in enumerate(shapes):
        n = math.prod(check_int(f"shapes[{i}][{j}]", d, 0) for j, d in enumerate(shape))
        total += 2 * n + 8 * -(-n // block_size)
    return total
