"""8-bit AdamW: m and v stored as block-wise dynamic 8-bit codes (Dettmers et al. 2022).

Block-wise quantization (`lab.formats.blockwise`, where the map and the quantizer are defined). A state
tensor x is flattened and cut into blocks of B elements (B = block_size = 2048); each block keeps its absmax
a = max|x| in fp32 and each element one byte q, the index of the dynamic map value nearest to x / a,

    q = argmin_k |x / a − code[k]|,        x̂ = a · code[q],

so an outlier spoils the precision of its own block only. The dynamic (tree) map spends a sign bit, a
decimal exponent E written as E zero bits and an indicator bit, and a linear fraction of the remaining
F = 6 − E bits: 256 values in [−1, 1] over 7 decades (`dynamic_map`, bitsandbytes' ``create_dynamic_map``,
signed for m, unsigned for v). The optimizer keeps the map in float32; `blockwise_error_vs_float64`
measures its quantizer against the same steps in float64.

AdamW step t (g gradient, λ weight decay, all in fp32; only the stored m, v are 8-bit):

    m, v ← dequantize(stored m, v)
    m ← β1·m + (1 − β1)·g,   v ← β2·v + (1 − β2)·g²
    W ← W·(1 − lr·λ) − lr · (m / (1 − β1^t)) / (√(v / (1 − β2^t)) + ε)
    stored m, v ← quantize(m, v)          (the update used the fp32 m, v of this step)

weight_decay = 0 is Adam. As in bitsandbytes, a tensor of fewer than ``min_8bit_size`` = 4,096 elements,
and any parameter of a group with "optim_bits": 32, keeps fp32 m and v and takes AdamW's own step
(`Adam8bit`'s 32-bit rule).

State per 8-bit parameter of N elements, K = ⌈N / B⌉ blocks: "m_codes", "v_codes" uint8 (N,) and
"m_absmax", "v_absmax" fp32 (K,): 2·N + 8·K bytes (AdamW fp32: 8·N; a 32-bit one: "m", "v" fp32 (N,),
8·N). The step t is a Python int
(no tensor). The two maps (2 × 256 fp32 = 2 KiB) are kept once on the optimizer, not per parameter,
and are not part of ``optimizer.state``; `adam8bit_state_bytes` does not count them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from lab.core.checks import check_float_tensor, check_int, check_number, check_power_of_two
from lab.formats.blockwise import (_dequantize, _quantize, dequantize_blockwise, dynamic_map, nearest_code_table,
                                   quantize_blockwise)


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
    """AdamW with 8-bit block-wise dynamic m and v (module docstring), small tensors and opted-out groups in fp32.

    ``lr`` ≥ 0, ``betas`` (β1, β2) in [0, 1), ``eps`` ε > 0, ``weight_decay`` λ ≥ 0 (decoupled, as
    AdamW; 0 = Adam), ``block_size`` B a positive power of two, ``min_8bit_size`` an int ≥ 0 (0: every
    tensor 8-bit). A param group may also set "optim_bits": 8 (the default) or 32, and its own
    "min_8bit_size" (`lab.params.stable_embedding.adam8bit_param_groups` builds such groups).

    32-bit rule. A parameter p of N = p.numel() elements keeps "m", "v" as fp32 (N,), flat as the codes
    are (8·N bytes, as AdamW) when

        N < min_8bit_size        or        its group's "optim_bits" is 32,

    decided once, at its first step; every other parameter keeps 8-bit codes. An fp32 parameter with fp32
    state takes `torch.optim.AdamW`'s step (its single-tensor loop, the CPU default: the same operations in
    the same order), so its trajectory is bit-identical to AdamW's; a bf16 one is updated through an fp32 copy.
    This is bitsandbytes' rule: ``Optimizer2State.init_state`` (bitsandbytes/optim/optimizer.py, lines
    492–503 at tag 0.50.1, the same on main) switches to fp32 state when ``p.numel() <
    config["min_8bit_size"]``, strictly less, per parameter tensor, default 4,096, and reads ``optim_bits``
    from a per-parameter override (``get_config``, lines 343–366) such as the one ``StableEmbedding``
    registers for its weight. Its reason (docs/source/optimizers.mdx, line 23): a small tensor saves little
    memory, and small tensors are the biases and the norm gains, which vary a lot or need precision. In a
    block of 2,048 (here B; bitsandbytes has used 256 since 0.44.0) a norm's gain vector is one block or
    two, and 8 bits are 6 bytes per element saved on a sliver of the model (`adam8bit_state_bytes`).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, block_size: int = 2048, min_8bit_size: int = 4096):
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
        check_int("min_8bit_size", min_8bit_size, 0)
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "block_size": block_size,
                    "min_8bit_size": min_8bit_size, "optim_bits": 8}
        super().__init__(params, defaults)
        self.code_m, self.code_v = dynamic_map(signed=True), dynamic_map(signed=False)
        self.table_m, self.table_v = nearest_code_table(self.code_m), nearest_code_table(self.code_v)

    def add_param_group(self, param_group: dict) -> None:
        """torch's, after checking the group's "optim_bits" (8 or 32) and "min_8bit_size" (an int ≥ 0), its own
        or the defaults'."""
        if isinstance(param_group, dict):
            bits = param_group.get("optim_bits", self.defaults["optim_bits"])
            if check_int("optim_bits", bits, None) not in (8, 32):
                raise ValueError(f"optim_bits={bits} is not allowed; use 8 (block-wise codes) or 32 (fp32 state)")
            check_int("min_8bit_size", param_group.get("min_8bit_size", self.defaults["min_8bit_size"]), 0)
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One AdamW update of every parameter that has a gradient: fp32 m, v in place (the 32-bit rule), or
        8-bit m, v dequantized, updated and re-quantized."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Adam8bit does not support sparse gradients")
                state = self.state[p]
                if not state:
                    self._init_state(p, state, group)
                state["step"] += 1
                if "m" in state:
                    _adamw_fp32(p, state, group)
                else:
                    self._adamw_8bit(p, state, group)
        return loss

    def _init_state(self, p: torch.Tensor, state: dict, group: dict) -> None:
        """Zero m, v: fp32 "m", "v" (N,) under the 32-bit rule, else "m_codes", "m_absmax", "v_codes",
        "v_absmax" (module docstring)."""
        state["step"] = 0
        zeros = torch.zeros(p.numel(), dtype=torch.float32, device=p.device)
        if group["optim_bits"] == 32 or p.numel() < group["min_8bit_size"]:
            state["m"], state["v"] = zeros, zeros.clone()
            return
        B = group["block_size"]
        state["m_codes"], state["m_absmax"] = _quantize(zeros, self.code_m, B, self.table_m)
        state["v_codes"], state["v_absmax"] = _quantize(zeros, self.code_v, B, self.table_v)

    def _adamw_8bit(self, p: torch.Tensor, state: dict, group: dict) -> None:
        """The module docstring's step t on the 8-bit state of p."""
        lr, (beta1, beta2), eps, wd, B = (group[k] for k in ("lr", "betas", "eps", "weight_decay", "block_size"))
        g, t = p.grad.float(), state["step"]
        m = _dequantize(state["m_codes"], state["m_absmax"], self.code_m, B, g.shape)
        v = _dequantize(state["v_codes"], state["v_absmax"], self.code_v, B, g.shape)
        m.mul_(beta1).add_(g, alpha=1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = (v.sqrt() / math.sqrt(1.0 - beta2 ** t)).add_(eps)
        p.mul_(1.0 - lr * wd)
        p.sub_((m / denom).mul_(lr / (1.0 - beta1 ** t)).to(p.dtype))
        state["m_codes"], state["m_absmax"] = _quantize(m, self.code_m, B, self.table_m)
        state["v_codes"], state["v_absmax"] = _quantize(v, self.code_v, B, self.table_v)


def _adamw_fp32(p: torch.Tensor, state: dict, group: dict) -> None:
    """AdamW step t on the fp32 "m", "v" of p (any floating dtype, updated through fp32), written as
    `torch.optim.AdamW`'s single-tensor loop writes it (torch 2.13, torch/optim/adam.py):

        W ← W·(1 − lr·λ) (λ ≠ 0),   m ← lerp(m, g, 1 − β1),   v ← β2·v + (1 − β2)·g²,
        W ← W − (lr / (1 − β1^t)) · m / (√v / (1 − β2^t)^½ + ε)
    """
    lr, (beta1, beta2), eps, wd = (group[k] for k in ("lr", "betas", "eps", "weight_decay"))
    t, m, v = state["step"], state["m"].view(p.shape), state["v"].view(p.shape)
    w, g = p.float(), p.grad.float()              # p itself and its grad when p is fp32
    if wd != 0:
        w.mul_(1 - lr * wd)
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = (v.sqrt() / (1 - beta2 ** t) ** 0.5).add_(eps)
    w.addcdiv_(m, denom, value=-(lr / (1 - beta1 ** t)))
    if w is not p:
        p.copy_(w)


def adam8bit_state_bytes(shapes: Iterable[tuple[int, ...]], block_size: int = 2048, min_8bit_size: int = 4096) -> int:
    """Bytes of `Adam8bit`'s state tensors for parameters of these shapes (all in "optim_bits" 8 groups):

        Σ  8·N                  if N < min_8bit_size   (fp32 m and v: `Adam8bit`'s 32-bit rule)
           2·N + 8·⌈N / B⌉      otherwise               (uint8 codes and an fp32 absmax per block, for m and v)

    N = numel (1 for a 0-dim parameter, whose codes are stored flat as (1,)); a parameter of an "optim_bits"
    32 group counts 8·N, as AdamW's; the two shared maps are not in ``optimizer.state`` and not counted.
    """
    check_power_of_two("block_size", block_size)
    check_int("min_8bit_size", min_8bit_size, 0)
    total = 0
    for i, shape in enumerate(shapes):
        n = math.prod(check_int(f"shapes[{i}][{j}]", d, 0) for j, d in enumerate(shape))
        total += 8 * n if n < min_8bit_size else 2 * n + 8 * -(-n // block_size)
    return total
