"""Least-squares refit of the linear that reads pruned units (structured pruning, `lab.prune.structured`).

Removing attention heads removes columns of W_o; removing MLP channels removes columns of W_down. In the
book's notation a linear W (C_out, C_in) sees calibration inputs X (C_in, N), one token per column; K are
the kept input columns, R the removed ones, G = X Xᵀ (C_in, C_in) their Gram matrix. Dropping R alone
leaves Ŵ = W_K, with the output error ‖W X − W_K X_K‖²_F. The refit instead lets the kept columns move:

    Ŵ = argmin_V ‖W X − V X_K‖²_F + λ ‖V − W_K‖²_F
      = W_K + W_R G_RK (G_KK + λ I)⁻¹,           λ = percdamp · mean(diag G_KK)

(set the gradient (V X_K − W X) X_Kᵀ + λ (V − W_K) to zero). With λ = 0 this is the least-squares
solution of X_Kᵀ Vᵀ ≈ Xᵀ Wᵀ, the minimiser `torch.linalg.lstsq` finds, so its error is never above that
of dropping R; it is also the Optimal Brain Surgeon update (book chapter 2) for removing the weights of
the columns R of every row together: δ_K = −(H⁻¹)_KR ((H⁻¹)_RR)⁻¹ w_R = H_KK⁻¹ H_KR w_R. The damping
λ, as GPTQ and SparseGPT add to diag H, penalises the change V − W_K, not V: where the calibration data
say little (a kept input that is zero on every token) the weights stay as they were, and removing
nothing (R = ∅) returns W exactly.

Method: Kwon et al. 2022 ("A Fast Post-Training Pruning Framework for Transformers", *mask tuning*)
reconstruct each layer's output by linear least squares on calibration data after heads and filters are
removed, but fit only one scale per kept head / filter (plus, for attention, a constant) and take the
targets from the unpruned model; here every weight of the reading linear is refit, and the target is the
unpruned layer on the inputs it sees after the earlier layers were pruned and refit (sequential, as
`lab.quant.model` calibrates GPTQ: `lab.layerwise.for_each_layer`). FLAP (An et al. 2024) adds no weight
refit: it compensates with a bias b = W_R · mean_t(x_R), which the lab GPT's bias-free linears cannot hold.

Dtypes and cost: G is accumulated in float64 by `lab.layerwise.InputStats` (2·N·C_in² FLOPs per linear);
the solve runs in float64: one Cholesky factorisation of G_KK + λI (|K|³/3), the product G_KR W_Rᵀ
(2·|K|·|R|·C_out) and two triangular solves (2·|K|²·C_out); Ŵ is returned in the weight's dtype.
On the book's model (6 layers, C = 256, F = 704, 32 × 128 calibration tokens) the whole sequential
refit of `structured_prune` takes about 3 s of one CPU thread, about half of it the Gram accumulation;
the solves themselves take about 0.2 s.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lab.core.checks import check_int, check_matrix, check_number
from lab.prune.obs import _check_hessian


def _check_keep(keep: Sequence[int] | torch.Tensor, C_in: int) -> torch.Tensor:
    """``keep`` as a sorted int64 tensor of distinct column indices in [0, C_in), at least one."""
    if isinstance(keep, torch.Tensor):
        if keep.dim() != 1 or keep.dtype != torch.int64:
            raise ValueError(f"keep must be a 1-D int64 tensor of column indices, got shape {tuple(keep.shape)}, "
                             f"{keep.dtype}")
        keep = keep.tolist()
    elif not isinstance(keep, (list, tuple, range)):
        raise TypeError(f"keep must be a list of column indices or a 1-D int64 tensor, got {keep!r:.80}")
    for j, column in enumerate(keep):
        check_int(f"keep[{j}]", column, 0, C_in - 1)
    if not keep or len(set(keep)) != len(keep):
        raise ValueError(f"keep must hold distinct column indices in [0, {C_in}), at least one, got {list(keep)}")
    return torch.tensor(sorted(keep), dtype=torch.int64)


@torch.no_grad()
def refit_columns(weight: torch.Tensor, gram: torch.Tensor, keep: Sequence[int] | torch.Tensor,
                  percdamp: float = 0.01) -> torch.Tensor:
    """Ŵ = W_K + W_R G_RK (G_KK + λI)⁻¹ (|K| columns): the kept columns refit to W's output (module docstring).

    ``weight`` W (C_out, C_in), floating; ``gram`` G = X Xᵀ (C_in, C_in), symmetric, over the calibration
    tokens (e.g. `lab.layerwise.InputStats.gram`); ``keep``: the kept input columns K (indices into C_in;
    the rest are removed); ``percdamp`` ≥ 0: λ = percdamp · mean(diag G_KK). Solved in float64 with a
    Cholesky factorisation; returns (C_out, |K|) in the weight's dtype and device, columns in sorted K order.
    ValueError when G_KK + λI is not positive definite (percdamp = 0 and too few tokens or a dead input).
    """
    check_matrix("weight", weight)
    C_out, C_in = weight.shape
    _check_hessian(gram, C_in, "gram")
    keep = _check_keep(keep, C_in).to(weight.device)
    damp_fraction = check_number("percdamp", percdamp, low=0)
    removed = torch.ones(C_in, dtype=torch.bool, device=weight.device)
    removed[keep] = False
    W = weight.detach().to(torch.float64)
    G = gram.detach().to(device=weight.device, dtype=torch.float64)
    G_kk = G[keep][:, keep]
    damp = damp_fraction * G_kk.diagonal().mean()
    G_kk.diagonal().add_(damp)
    L, info = torch.linalg.cholesky_ex(G_kk)
    if info.item() != 0:
        raise ValueError(f"gram[keep][:, keep] + λI is not positive definite with percdamp={percdamp} "
                         f"(λ={float(damp):.3g}); use more calibration tokens or a larger percdamp")
    delta = torch.cholesky_solve(G[keep][:, removed] @ W[:, removed].T, L)   # (|K|, C_out)
    return (W[:, keep] + delta.T).to(weight.dtype)
