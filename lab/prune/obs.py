"""Optimal Brain Surgeon for one output row of a linear layer.

Layer y = W x, W (rows, d); calibration inputs X (d, N), one sample per column. Each row w (d,) is pruned
on its own, minimising the reconstruction error E(ŵ) = ||w X − ŵ X||² = (w − ŵ)ᵀ X Xᵀ (w − ŵ). We use the
Hessian normalised by the sample count, as SparseGPT accumulates H = 2/N Σ x xᵀ:

    H = 2 X Xᵀ / N,        E(w + δ) = (N/2) · δᵀ H δ

(the factor N/2 changes no mask and no update, only the scale of E). Removing weight q means adding δ with
δ_q = −w_q; the best such δ (Hassibi & Stork 1993, Optimal Brain Surgeon; LeCun et al. 1990, Optimal Brain
Damage, keeps only the diagonal and no update) is

    δ = −w_q / [H⁻¹]_qq · H⁻¹[:, q]       with  E = (N/2) · w_q² / [H⁻¹]_qq

and the saliency used for ranking is w_q² / [H⁻¹]_qq. With H = I this is w_q²: magnitude pruning. After a
removal the weight q stays at 0, so the next step uses the inverse of H restricted to the remaining weights.
"""

from __future__ import annotations

import torch

from lab.core.checks import check_float_tensor, check_int, check_matrix, check_number, check_tensor


def layer_hessian(X: torch.Tensor) -> torch.Tensor:
    """H = 2 X Xᵀ / N for inputs X (d, N) (columns are samples); float64 (d, d)."""
    check_float_tensor("X", X, 2)  # (d, n_samples)
    if X.shape[1] == 0:
        raise ValueError(f"X must hold at least one sample (a column), got shape {tuple(X.shape)}")
    X = X.to(torch.float64)
    return 2.0 * X @ X.T / X.shape[1]


def reconstruction_error(W: torch.Tensor, W_hat: torch.Tensor, X: torch.Tensor) -> float:
    """||W X − Ŵ X||_F² for W, Ŵ (rows, d) and X (d, N), computed in float64."""
    check_tensor("W", W, (1, 2))
    check_tensor("W_hat", W_hat, (1, 2))
    check_tensor("X", X, 2)
    if W.shape != W_hat.shape or W.shape[-1] != X.shape[0]:
        raise ValueError(f"shapes do not match: W {tuple(W.shape)}, W_hat {tuple(W_hat.shape)}, "
                         f"X {tuple(X.shape)} (need W, W_hat (rows, d) and X (d, N))")
    return float(((W.to(torch.float64) - W_hat.to(torch.float64)) @ X.to(torch.float64)).square().sum())


def _check_hessian(hessian: torch.Tensor, d: int, name: str = "hessian") -> None:
    check_float_tensor(name, hessian)
    if hessian.shape != (d, d):
        raise ValueError(f"{name} must have shape (in_features, in_features) = ({d}, {d}), "
                         f"got {tuple(hessian.shape)}")
    if not torch.allclose(hessian, hessian.T, rtol=1e-5, atol=1e-8 * float(hessian.abs().max())):
        raise ValueError(f"{name} must be symmetric (H = 2 X Xᵀ / N)")


def _check_row(w: torch.Tensor, H_inv: torch.Tensor, dims) -> int:
    """The length d of the row(s) w (..., d) (a 0-dim w: d = 1), with H_inv (d, d): both floating and finite."""
    check_float_tensor("w", w, dims)
    check_matrix("H_inv", H_inv)
    d = w.shape[-1] if w.dim() else 1
    if H_inv.shape != (d, d):
        raise ValueError(f"H_inv must have shape (d, d) = ({d}, {d}) for w of shape {tuple(w.shape)}, "
                         f"got {tuple(H_inv.shape)}")
    return d


def weight_and_inverse_hessian_cholesky(weight: torch.Tensor, hessian: torch.Tensor,
                                        percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, U) in float64 for the column-by-column solvers (SparseGPT, GPTQ): U upper, Uᵀ U = (H + λI)⁻¹.

    W (rows, d) is a copy of ``weight``; H (d, d) is validated (floating, finite, symmetric). Dead inputs
    (H_jj = 0: feature j is zero on every calibration sample) get H_jj = 1 and W[:, j] = 0, as in the
    reference code; damping λ = percdamp · mean(diag H), percdamp ≥ 0. Row j of U holds the first row of
    (H[j:, j:])⁻¹ divided by the square root of its first entry (see `lab.prune.sparsegpt`).
    """
    d = weight.shape[1]
    _check_hessian(hessian, d)
    check_number("percdamp", percdamp, low=0)
    W = weight.detach().to(torch.float64).clone()
    H = hessian.detach().to(device=W.device, dtype=torch.float64).clone()
    dead = torch.nonzero(H.diagonal() == 0).squeeze(1)
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    damp = float(percdamp) * H.diagonal().mean()
    H.diagonal().add_(damp)
    L, info = torch.linalg.cholesky_ex(H)
    if info.item() != 0:
        raise ValueError(f"hessian is not positive definite after dampening with percdamp={percdamp} "
                         f"(λ={float(damp):.3g}); use more calibration samples or a larger percdamp")
    U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
    if info.item() != 0:
        raise ValueError(f"the inverse hessian is numerically not positive definite with percdamp={percdamp}; "
                         "use a larger percdamp")
    return W, U


def obs_saliency(w: torch.Tensor, H_inv: torch.Tensor) -> torch.Tensor:
    """Saliency w_q² / [H⁻¹]_qq for every q; w (..., d), H_inv (d, d) → (..., d)."""
    _check_row(w, H_inv, None)
    return w.square() / H_inv.diagonal()


def obs_update(w: torch.Tensor, H_inv: torch.Tensor, q: int) -> torch.Tensor:
    """Compensating update δ = −w_q / [H⁻¹]_qq · H⁻¹[:, q] for removing weight q; w (d,) → δ (d,), δ_q = −w_q."""
    check_int("q", q, 0, _check_row(w, H_inv, 1) - 1)
    return -w[q] / H_inv[q, q] * H_inv[:, q]


def obs_prune_row_bruteforce(w: torch.Tensor, H: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy OBS: remove k weights of the row w (d,) one at a time, in float64.

    Each step inverts H restricted to the remaining weights R (explicitly, ``torch.linalg.inv``), removes the
    q ∈ R of smallest saliency (ties: lowest index) and applies δ on R. Returns (ŵ (d,) float64 with ŵ_q = 0
    for the removed q, removed indices (k,) int64 in removal order). O(k·d³): a reference for tiny rows.
    """
    d = check_float_tensor("w", w, 1).shape[0]
    if check_float_tensor("H", H, 2).shape != (d, d):
        raise ValueError(f"H must have shape ({d}, {d}) for w of shape ({d},), got {tuple(H.shape)}")
    _check_hessian(H, d, "H")
    check_int("k", k, 0, d)
    if k and torch.linalg.cholesky_ex(H.to(torch.float64)).info.item() != 0:
        raise ValueError("H must be positive definite (its restrictions are inverted); add damping to its diagonal")
    w_hat = w.to(torch.float64).clone()
    H = H.to(torch.float64)
    remaining = list(range(d))
    removed = []
    for _ in range(k):
        idx = torch.tensor(remaining)
        H_inv = torch.linalg.inv(H[idx][:, idx])
        w_R = w_hat[idx]
        local_q = int(torch.argmin(obs_saliency(w_R, H_inv)))  # argmin returns the first minimum
        w_hat[idx] = w_R + obs_update(w_R, H_inv, local_q)
        q = remaining.pop(local_q)
        w_hat[q] = 0.0  # exactly zero, not zero up to rounding
        removed.append(q)
    return w_hat, torch.tensor(removed, dtype=torch.int64)
