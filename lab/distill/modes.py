"""Forward vs reverse KL on a toy problem: a unimodal student fitted to a teacher with two modes.

The student is a discretised Gaussian over V bins i = 0 … V−1 with learnable mean μ and log-scale
s (σ = e^s): its logits are z_{S,i} = −(i − μ)² / (2σ²), so p_S = softmax(z_S) (τ = 1). It is fitted
to the teacher's logits z_T by Adam on `lab.distill.kd_loss` with kind="forward",
KL(p_T ‖ p_S), or kind="reverse", KL(p_S ‖ p_T).

* Forward KL is mode covering. This family is an exponential family with sufficient statistics
  (i, i²) (natural parameters μ/σ² and −1/(2σ²)), so the forward-KL optimum is moment matching:
  E_S[i] = E_T[i] and E_S[i²] = E_T[i²]. On a bimodal teacher the student sits between the modes
  and spreads over both, gap included.
* Reverse KL is mode seeking: bins where p_T ≈ 0 cost p_S log(p_S / p_T) → large, so the student
  shrinks onto one mode, the one its starting point is nearer to (a symmetric start is a
  stationary point: start it off-centre).
"""

from __future__ import annotations

import torch

from lab.core.checks import check_choice, check_float_tensor, check_int, check_number
from lab.distill.losses import KINDS, kd_loss


def gaussian_logits(mean: torch.Tensor, log_scale: torch.Tensor, V: int) -> torch.Tensor:
    """z_i = −(i − μ)² / (2σ²) for i = 0 … V−1, σ = exp(s): (V,) float64 logits of a discretised Gaussian.

    ``mean`` μ and ``log_scale`` s: 0-d float tensors (gradients flow through them).
    """
    check_int("V", V, 2)
    i = torch.arange(V, dtype=torch.float64)
    return -(i - mean) ** 2 / (2 * torch.exp(2 * log_scale))


def fit_gaussian_student(teacher_logits: torch.Tensor, kind: str, mean: float, scale: float,
                         steps: int = 300, lr: float = 0.1) -> dict:
    """Fit a discretised Gaussian student to ``teacher_logits`` z_T (V,) by Adam on kd_loss(kind, τ = 1).

    ``kind``: "forward" (KL(p_T ‖ p_S)) or "reverse" (KL(p_S ‖ p_T)); ``mean`` μ₀ and ``scale`` σ₀ > 0:
    the starting point; ``steps`` Adam steps of learning rate ``lr``. Returns {"mean": μ, "scale": σ,
    "probs": p_S (V,) float64, "loss": the final KL}. Deterministic (no randomness involved).
    """
    if check_float_tensor("teacher_logits", teacher_logits, 1).shape[0] < 2:
        raise ValueError(f"teacher_logits must hold V >= 2 bins, got shape {tuple(teacher_logits.shape)}")
    check_choice("kind", kind, KINDS)
    check_number("mean", mean)
    check_number("scale", scale, low=0, closed=(False, True))
    check_int("steps", steps)
    check_number("lr", lr, low=0, closed=(False, True))
    V = teacher_logits.shape[0]
    z_t = teacher_logits.to(torch.float64)[None]                          # (1, V): one position
    mu = torch.tensor(float(mean), dtype=torch.float64, requires_grad=True)
    s = torch.tensor(float(scale), dtype=torch.float64).log().requires_grad_()
    opt = torch.optim.Adam([mu, s], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = kd_loss(gaussian_logits(mu, s, V)[None], z_t, temperature=1.0, kind=kind)
        loss.backward()
        opt.step()
    with torch.no_grad():
        z_s = gaussian_logits(mu, s, V)
        loss = kd_loss(z_s[None], z_t, temperature=1.0, kind=kind)
    return {"mean": mu.item(), "scale": s.exp().item(), "probs": z_s.softmax(-1), "loss": loss.item()}
