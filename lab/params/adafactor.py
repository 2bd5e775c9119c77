"""Adafactor (Shazeer & Stern 2018): Adam's second moment in sublinear memory.

For a matrix parameter W (n, m) with gradient g, Adam keeps v (n, m). Adafactor keeps only the
running averages of the row means R (n,) and column means C (m,) of g² + ε1, and rebuilds v as the
rank-1 matrix that matches both (step t = 1, 2, …):

    β2_t = 1 − t^c                      (c = decay_rate = −0.8; β2_1 = 0, β2_t → 1)
    R ← β2_t·R + (1 − β2_t)·mean_cols(g² + ε1)          (n,)
    C ← β2_t·C + (1 − β2_t)·mean_rows(g² + ε1)          (m,)
    v̂ = R Cᵀ / mean(R)                                  (n, m), never stored
    U = g / √v̂                                          (a vector keeps v itself:
                                                          v ← β2_t·v + (1 − β2_t)·(g² + ε1), U = g / √v)
    U ← U / max(1, RMS(U) / d)                           update clipping, d = clip_threshold = 1
    α_t = ρ_t · max(ε2, RMS(W))                          (scale_parameter; otherwise α_t = ρ_t)
    ρ_t = min(1e-2, 1/√t)                                (relative_step; warmup_init: min(1e-6·t, 1/√t);
                                                          otherwise ρ_t = lr)
    m ← β1·m + (1 − β1)·α_t·U                           (beta1 given: U' = m; otherwise U' = α_t·U)
    W ← W − λ·α_t·W − U'                                 λ = weight_decay

RMS(x) = ‖x‖₂ / √numel(x). A tensor of ≥ 3 dims (…, n, m) keeps R (…, n) and C (…, m): one factored
matrix per leading index. This is `transformers.optimization.Adafactor` (the fairseq code) step
for step, with the same defaults: eps = (ε1, ε2) = (1e-30, 1e-3), α_t computed from W before the
update, fp16/bf16 parameters updated through an fp32 copy with fp32 state;
`max_param_diff_vs_transformers` measures the largest difference after a few training steps.

State per parameter: R and C (≥ 2-D), v (1-D), m of the parameter's shape (with beta1), all in the
gradient's dtype (fp32 for fp16/bf16 parameters); the step t is a Python int, not a tensor. The
only 0-dim state tensors are a 0-dim parameter's v and m, which `adafactor_state_bytes` does not
count (as `measure_training_memory_cpu` does not). An (n, m) matrix costs (n + m)·b bytes
(b bytes per element) instead of Adam's 2·n·m·b.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from lab.core.checks import check_int, check_number
from lab.models.next_token import lm_batch_loss

_LOW = (torch.float16, torch.bfloat16)


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.norm(2) / math.sqrt(x.numel())


class Adafactor(torch.optim.Optimizer):
    """Adafactor: factored second moment, update clipping, relative step size (module docstring).

    ``lr`` None (default) requires ``relative_step=True``; a given ``lr`` (≥ 0) requires
    ``relative_step=False``. ``eps`` = (ε1 > 0, ε2 > 0), ``clip_threshold`` d > 0, ``decay_rate``
    c in [−1, 0), ``beta1`` None or in [0, 1), ``weight_decay`` λ ≥ 0.
    """

    def __init__(self, params: Iterable, lr: float | None = None, eps: tuple[float, float] = (1e-30, 1e-3),
                 clip_threshold: float = 1.0, decay_rate: float = -0.8, beta1: float | None = None,
                 weight_decay: float = 0.0, scale_parameter: bool = True, relative_step: bool = True,
                 warmup_init: bool = False):
        if isinstance(params, nn.Module):
            raise TypeError(f"params must be an iterable of parameters or param groups such as model.parameters(), "
                            f"got the module {type(params).__name__}")
        for name, flag in (("scale_parameter", scale_parameter), ("relative_step", relative_step),
                           ("warmup_init", warmup_init)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r} ({type(flag).__name__})")
        if lr is None and not relative_step:
            raise ValueError("lr=None is not allowed with relative_step=False; give lr or use relative_step=True")
        if lr is not None:
            check_number("lr", lr, 0.0)
            if relative_step:
                raise ValueError(f"lr={lr!r} is not allowed with relative_step=True (ρ_t replaces lr); "
                                 "use lr=None or relative_step=False")
        if warmup_init and not relative_step:
            raise ValueError("warmup_init=True is not allowed with relative_step=False; use relative_step=True")
        if not (isinstance(eps, tuple) and len(eps) == 2):
            raise TypeError(f"eps must be a tuple (eps1, eps2), got {eps!r}")
        check_number("eps[0]", eps[0], 0.0, closed=(False, True))
        check_number("eps[1]", eps[1], 0.0, closed=(False, True))
        check_number("clip_threshold", clip_threshold, 0.0, closed=(False, True))
        check_number("decay_rate", decay_rate, -1.0, 0.0, closed=(True, False))
        if beta1 is not None:
            check_number("beta1", beta1, 0.0, 1.0, closed=(True, False))
        check_number("weight_decay", weight_decay, 0.0)
        defaults = {"lr": lr, "eps": eps, "clip_threshold": clip_threshold, "decay_rate": decay_rate,
                    "beta1": beta1, "weight_decay": weight_decay, "scale_parameter": scale_parameter,
                    "relative_step": relative_step, "warmup_init": warmup_init}
        super().__init__(params, defaults)

    @staticmethod
    def step_size(group: dict, t: int, W: torch.Tensor) -> torch.Tensor | float:
        """α_t = ρ_t · max(ε2, RMS(W)) (or ρ_t without scale_parameter), for step t ≥ 1."""
        rho = min(1e-6 * t if group["warmup_init"] else 1e-2, 1.0 / math.sqrt(t)) if group["relative_step"] \
            else group["lr"]
        return _rms(W).clamp(min=group["eps"][1]) * rho if group["scale_parameter"] else rho

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One Adafactor update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            eps1, beta1, wd = group["eps"][0], group["beta1"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Adafactor does not support sparse gradients")
                g = p.grad.float() if p.grad.dtype in _LOW else p.grad
                W = p.float() if p.dtype in _LOW else p
                state, factored = self.state[p], g.dim() >= 2
                if not state:
                    state["step"] = 0
                    if beta1 is not None:
                        state["m"] = torch.zeros_like(g)
                    if factored:
                        state["R"] = g.new_zeros(g.shape[:-1])
                        state["C"] = g.new_zeros(g.shape[:-2] + g.shape[-1:])
                    else:
                        state["v"] = torch.zeros_like(g)
                state["step"] += 1
                t = state["step"]
                alpha = self.step_size(group, t, W)
                beta2 = 1.0 - t ** group["decay_rate"]
                g2 = g ** 2 + eps1
                if factored:
                    R, C = state["R"], state["C"]
                    R.mul_(beta2).add_(g2.mean(dim=-1), alpha=1.0 - beta2)
                    C.mul_(beta2).add_(g2.mean(dim=-2), alpha=1.0 - beta2)
                    U = (R / R.mean(dim=-1, keepdim=True)).rsqrt_().unsqueeze(-1) * C.unsqueeze(-2).rsqrt()
                    U.mul_(g)
                else:
                    v = state["v"]
                    v.mul_(beta2).add_(g2, alpha=1.0 - beta2)
                    U = v.rsqrt().mul_(g)
                U.div_((_rms(U) / group["clip_threshold"]).clamp_(min=1.0)).mul_(alpha)
                if beta1 is not None:
                    U = state["m"].mul_(beta1).add_(U, alpha=1.0 - beta1)
                if wd != 0:
                    W.add_(W, alpha=-wd * alpha)
                W.sub_(U)
                if W is not p:
                    p.copy_(W)
        return loss


def max_param_diff_vs_transformers(model: nn.Module, batches: Sequence, **kwargs) -> float:
    """Largest |W_lab − W_transformers| over the parameters of two copies of ``model``, one trained by
    `Adafactor` and one by ``transformers.optimization.Adafactor``, both built with ``kwargs`` and
    stepped once per batch of ``batches`` ((x, y) pairs, ids and next-token targets (B, T) int64) on
    the next-token loss. ``model`` is not changed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(batches, Sequence):
        raise TypeError(f"batches must be a sequence (a list) of (x, y) pairs, got {type(batches).__name__}")
    if not len(batches):
        raise ValueError("batches=[] is empty; allowed: one or more (x, y) pairs")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"model ({type(model).__name__}) has no parameter with requires_grad=True; nothing to train")
    from transformers.optimization import Adafactor as TransformersAdafactor

    trained = []
    for optimizer_class in (Adafactor, TransformersAdafactor):
        copied = copy.deepcopy(model)
        optimizer = optimizer_class([p for p in copied.parameters() if p.requires_grad], **kwargs)
        for batch in batches:
            optimizer.zero_grad(set_to_none=True)
            lm_batch_loss(copied, batch).backward()
            optimizer.step()
        trained.append(list(copied.parameters()))
    return max((p - q).abs().max().item() for p, q in zip(*trained))


def adafactor_state_bytes(shapes: Iterable[tuple[int, ...]], beta1: float | None = None,
                          dtype_bytes: int = 4) -> int:
    """Bytes of the state tensors (dim > 0) that `Adafactor` keeps for parameters of these shapes.

    Per shape (…, n, m) with ≥ 2 dims: R (…, n) + C (…, m) elements; (n,): v, n elements; () : none
    (its 0-dim v is not counted); plus numel (the momentum m) for ≥ 1 dims when ``beta1`` is given.
    ``dtype_bytes``: bytes per state element (the gradient's dtype; 4 for fp16/bf16 parameters).
    """
    if isinstance(shapes, (str, bytes)) or not isinstance(shapes, Iterable):
        raise TypeError(f"shapes must be an iterable of parameter shapes such as [(4096, 4096), (4096,)], "
                        f"got {shapes!r:.80}")
    check_int("dtype_bytes", dtype_bytes)
    if beta1 is not None:
        check_number("beta1", beta1, 0.0, 1.0, closed=(True, False))
    elements = 0
    for i, shape in enumerate(shapes):
        if not isinstance(shape, (tuple, list)):                  # torch.Size is a tuple
            raise TypeError(f"shapes[{i}] must be a shape (a tuple of ints), got {shape!r:.80}")
        shape = tuple(check_int(f"shapes[{i}][{j}]", d, 0) for j, d in enumerate(shape))
        if len(shape) >= 2:
            elements += math.prod(shape[:-1]) + math.prod(shape[:-2] + shape[-1:])
        elif len(shape) == 1:
            elements += shape[0]
        if beta1 is not None and shape:
            elements += math.prod(shape)
    return elements * dtype_bytes
