"""Pruning masks from a score: magnitude, N:M and Wanda.

A linear layer y = W x has W of shape (out_features, in_features) = (rows, columns). A mask is a
``torch.bool`` tensor shaped like W, ``True`` = kept; the pruned layer is Ŵ = W ⊙ mask.

Every mask keeps the largest scores of a comparison group and prunes the rest:

    magnitude   score |W_ij|,          group = the whole tensor (global, as torch.nn.utils.prune.l1_unstructured)
    Wanda       score |W_ij|·||X_j||₂, group = each output row i (Sun et al. 2023, "A Simple and Effective
                                       Pruning Approach for Large Language Models")
    N:M         group = m consecutive weights of one row (along the input dimension); n of them are kept

Counts are exact: a group of size G with sparsity s loses round(s·G) weights (Python's ``round``, half to
even, the same rule as ``torch.nn.utils.prune``), so it keeps G − round(s·G). Ties are broken by position:
among equal scores the weight with the lower (row-major) index is pruned first.

Magnitude pruning is the special case H = I of the OBS saliency w_q²/[H⁻¹]_qq (see ``lab.prune.obs``), and
Wanda's score is its diagonal approximation H ≈ diag(||X_j||²) compared within a row.
"""

from __future__ import annotations

import math
from numbers import Real

import torch


def _check_weight(weight: torch.Tensor, name: str = "weight") -> None:
    if not torch.is_tensor(weight):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {weight.dtype}")
    if weight.ndim != 2:
        raise ValueError(f"{name} must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        raise ValueError(f"{name} must be finite; it contains inf or nan")


def _check_sparsity(sparsity: float) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, Real):
        raise TypeError(f"sparsity must be a real number in [0, 1), got {type(sparsity).__name__}")
    if not 0.0 <= sparsity < 1.0:  # also rejects nan
        raise ValueError(f"sparsity={sparsity!r} is not allowed; it must lie in [0, 1)")
    return float(sparsity)


def _check_nm(n: int, m: int, in_features: int) -> None:
    for name, value in (("n", n), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 < n <= m:
        raise ValueError(f"n={n}, m={m} is not allowed; N:M sparsity needs 0 < n <= m")
    if in_features % m:
        raise ValueError(f"m={m} must divide the input dimension in_features={in_features}")


def _check_nm_sparsity(sparsity: float, n: int | None, m: int | None, in_features: int) -> bool:
    """Validate (sparsity, n, m); return True when N:M selection is asked for."""
    sparsity = _check_sparsity(sparsity)
    if (n is None) != (m is None):
        raise ValueError(f"n and m must be given together or both left None, got n={n}, m={m}")
    if n is None:
        return False
    _check_nm(n, m, in_features)
    if not math.isclose(sparsity, 1 - n / m, abs_tol=1e-9):
        raise ValueError(f"sparsity={sparsity!r} disagrees with n={n}, m={m}: N:M sparsity is 1 - n/m = {1 - n / m}")
    return True


def _keep_largest(score: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Bool mask (G, S) keeping all but the ``n_prune`` smallest entries of each row of ``score`` (G, S).

    A stable ascending sort puts equal scores in index order, so the lower index is pruned first.
    """
    order = torch.argsort(score, dim=-1, stable=True)
    keep = torch.ones_like(score, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n_prune], False)
    return keep


def keep_top_fraction(score: torch.Tensor, sparsity: float, per_row: bool = False) -> torch.Tensor:
    """Keep the top (1 − s) fraction of ``score`` (rows, columns); bool mask of the same shape.

    per_row=False: one group, the whole tensor, loses round(s·rows·columns) entries.
    per_row=True:  each row is a group and loses round(s·columns) entries.
    Ties: lower (row-major) index pruned first.
    """
    _check_weight(score, "score")
    sparsity = _check_sparsity(sparsity)
    groups = score if per_row else score.reshape(1, -1)
    n_prune = round(sparsity * groups.shape[1])
    return _keep_largest(groups, n_prune).reshape(score.shape)


def _nm_keep(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool mask keeping the n largest of every m consecutive entries along the last dim of ``score``."""
    rows, columns = score.shape
    _check_nm(n, m, columns)
    return _keep_largest(score.reshape(rows * columns // m, m), m - n).reshape(rows, columns)


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Magnitude pruning, global over the tensor: keep all but the round(s·numel) smallest |W_ij|.

    weight (out, in) float; returns bool (out, in). Per-tensor (not per-row), so that rows with larger
    weights keep more of them, which is what ``torch.nn.utils.prune.l1_unstructured`` does too.
    """
    _check_weight(weight)
    return keep_top_fraction(weight.abs(), sparsity, per_row=False)


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """N:M magnitude mask: in every group of m consecutive weights of a row, keep the n largest |W_ij|.

    weight (out, in) float with m dividing in; returns bool (out, in) with exactly n True per group.
    """
    _check_weight(weight)
    return _nm_keep(weight.abs(), n, m)


def wanda_mask(weight: torch.Tensor, act_norm: torch.Tensor, sparsity: float,
               n: int | None = None, m: int | None = None) -> torch.Tensor:
    """Wanda mask: score S_ij = |W_ij|·||X_j||₂, compared within each output row i.

    weight (out, in) float; act_norm (in,) the L2 norm of input feature j over the calibration tokens
    (any positive common factor, e.g. 1/√N, gives the same mask). Without n, m: each row keeps
    in − round(s·in) weights. With n, m (sparsity must be 1 − n/m): N:M selection on S.
    """
    _check_weight(weight)
    if not torch.is_tensor(act_norm) or not act_norm.is_floating_point():
        raise TypeError(f"act_norm must be a floating-point torch.Tensor, got {type(act_norm).__name__}"
                        + (f" of dtype {act_norm.dtype}" if torch.is_tensor(act_norm) else ""))
    if act_norm.shape != (weight.shape[1],):
        raise ValueError(f"act_norm must have shape (in_features,) = ({weight.shape[1]},), "
                         f"got {tuple(act_norm.shape)}")
    if not (torch.isfinite(act_norm).all() and (act_norm >= 0).all()):
        raise ValueError("act_norm must be finite and non-negative (it is a norm)")
    use_nm = _check_nm_sparsity(sparsity, n, m, weight.shape[1])
    score = weight.abs().to(torch.float64) * act_norm.to(device=weight.device, dtype=torch.float64)
    return _nm_keep(score, n, m) if use_nm else keep_top_fraction(score, sparsity, per_row=True)
