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

import torch

from lab.core.checks import check_choice, check_float_tensor, check_fraction, check_matrix
from lab.formats.sparse24 import check_nm


def check_nm_sparsity(sparsity: float, n: int | None, m: int | None, in_features: int) -> bool:
    """Validate (sparsity in [0, 1), n, m); return True when N:M selection is asked for."""
    sparsity = check_fraction("sparsity", sparsity, closed=(True, False))
    if (n is None) != (m is None):
        raise ValueError(f"n and m must be given together or both left None, got n={n}, m={m}")
    if n is None:
        return False
    check_nm(n, m, in_features)
    if not math.isclose(sparsity, 1 - n / m, abs_tol=1e-9):
        raise ValueError(f"sparsity={sparsity!r} disagrees with n={n}, m={m}: N:M sparsity is 1 - n/m = {1 - n / m}")
    return True


def keep_largest(score: torch.Tensor, n_prune: int) -> torch.Tensor:
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
    check_matrix("score", score)
    sparsity = check_fraction("sparsity", sparsity, closed=(True, False))
    check_choice("per_row", per_row, (False, True))
    groups = score if per_row else score.reshape(1, -1)
    n_prune = round(sparsity * groups.shape[1])
    return keep_largest(groups, n_prune).reshape(score.shape)


def nm_keep(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool mask keeping the n largest of every m consecutive entries of each row of ``score`` (rows, columns)."""
    rows, columns = score.shape
    check_nm(n, m, columns)
    return keep_largest(score.reshape(rows * columns // m, m), m - n).reshape(rows, columns)


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Magnitude pruning, global over the tensor: keep all but the round(s·numel) smallest |W_ij|.

    weight (out, in) float; returns bool (out, in). Per-tensor (not per-row), so that rows with larger
    weights keep more of them, which is what ``torch.nn.utils.prune.l1_unstructured`` does too.
    """
    check_matrix("weight", weight)
    return keep_top_fraction(weight.abs(), sparsity, per_row=False)


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """N:M magnitude mask: in every group of m consecutive weights of a row, keep the n largest |W_ij|.

    weight (out, in) float with m dividing in; returns bool (out, in) with exactly n True per group.
    """
    check_matrix("weight", weight)
    return nm_keep(weight.abs(), n, m)


def wanda_mask(weight: torch.Tensor, act_norm: torch.Tensor, sparsity: float,
               n: int | None = None, m: int | None = None) -> torch.Tensor:
    """Wanda mask: score S_ij = |W_ij|·||X_j||₂, compared within each output row i.

    weight (out, in) float; act_norm (in,) the L2 norm of input feature j over the calibration tokens
    (any positive common factor, e.g. 1/√N, gives the same mask). Without n, m: each row keeps
    in − round(s·in) weights. With n, m (sparsity must be 1 − n/m): N:M selection on S.
    """
    check_matrix("weight", weight)
    check_float_tensor("act_norm", act_norm)
    if act_norm.shape != (weight.shape[1],):
        raise ValueError(f"act_norm must have shape (in_features,) = ({weight.shape[1]},), "
                         f"got {tuple(act_norm.shape)}")
    if not (act_norm >= 0).all():
        raise ValueError("act_norm must be non-negative (it is a norm)")
    use_nm = check_nm_sparsity(sparsity, n, m, weight.shape[1])
    score = weight.abs().to(torch.float64) * act_norm.to(device=weight.device, dtype=torch.float64)
    return nm_keep(score, n, m) if use_nm else keep_top_fraction(score, sparsity, per_row=True)
