"""SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
One-Shot"), written from the paper; the authors' code, github.com/IST-DASLab/sparsegpt ``sparsegpt.py``
(``SparseGPT.fasterprune``), was read to match its conventions (damping, dead inputs, block-wise selection).

W (rows, d), H = 2 X Xᵀ / N (d, d) (``lab.prune.obs.layer_hessian``). OBS per row (``lab.prune.obs``) needs a
different H⁻¹ for every row's pruned set; SparseGPT makes all rows share one sequence of inverses by visiting
the columns left to right and freezing each column after its visit: at column j the free weights are the
columns F_j = {j, …, d−1} of every row, with inverse Hessian H_{F_j}⁻¹ = (H[j:, j:])⁻¹. These are the rows of
the upper Cholesky factor U of H⁻¹ (H⁻¹ = Uᵀ U):

    U[j, j:] = (H_{F_j}⁻¹)[0, :] / √(H_{F_j}⁻¹)[0, 0],      U_jj² = [H_{F_j}⁻¹]_00

so, for a weight w_j that is pruned (q_j = 0) or kept (q_j = w_j), the OBS update of the free weights is

    err_j = (w_j − q_j) / U_jj,        w[j:] ← w[j:] − err_j · U[j, j:]

Columns are processed in blocks of B: inside a block each column updates the rest of the block at once, and
the columns right of the block receive the block's updates in one matrix product, W[:, i2:] −= Err · U[i1:i2, i2:]
(lazy batched updates). Selection, as in the reference: unstructured: at the start of each block, among all
rows × block columns, prune the smallest w²/U_jj² (the OBS saliency w_j²/[H_{F_j}⁻¹]_00); the block
[i1, i2) prunes round(s·rows·i2) − round(s·rows·i1) weights, so the total is exactly round(s·rows·d).
N:M: at every column j with j mod m = 0, each row keeps the n largest w²/U_jj² of columns j … j+m−1.
Ties: lower (row-major) index pruned first.

Damping λ = percdamp · mean(diag H) is added to diag H. Dead inputs (H_jj = 0: the feature is zero on all
calibration samples) get H_jj = 1 and W[:, j] = 0, as in the reference. Computed in float64, returned in
the weight's dtype.
"""

from __future__ import annotations

import torch

from lab.core.checks import check_int, check_matrix
from lab.prune.masks import check_nm_sparsity, keep_largest, nm_keep
from lab.prune.obs import weight_and_inverse_hessian_cholesky


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, n: int | None = None,
                    m: int | None = None, blocksize: int = 128, percdamp: float = 0.01, *,
                    mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune W (rows, d) with SparseGPT given H (d, d); returns (Ŵ in weight's dtype, mask bool, True = kept).

    sparsity in [0, 1); n, m: N:M instead (n kept of every m, sparsity must be 1 − n/m, m must divide
    blocksize and d). blocksize ≥ 1 columns per lazy-update block; percdamp ≥ 0. ``mask`` (rows, d) bool: prune
    exactly these weights (False) with SparseGPT's updates instead of selecting them; then n, m must be None
    and sparsity is not used. Formulas in the module docstring.
    """
    check_matrix("weight", weight)
    rows, d = weight.shape
    use_nm = check_nm_sparsity(sparsity, n, m, d)
    check_int("blocksize", blocksize)
    if use_nm and blocksize % m:
        raise ValueError(f"blocksize={blocksize} must be a multiple of m={m} so that N:M groups lie in one block")
    if mask is not None:
        if not torch.is_tensor(mask) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a torch.bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
        if mask.shape != weight.shape:
            raise ValueError(f"mask must have the weight's shape {tuple(weight.shape)}, got {tuple(mask.shape)}")
        if use_nm:
            raise ValueError(f"give either mask or n, m, not both (got n={n}, m={m})")

    W, U = weight_and_inverse_hessian_cholesky(weight, hessian, percdamp)
    keep = torch.ones_like(W, dtype=torch.bool) if mask is None else mask.to(W.device).clone()

    for i1 in range(0, d, blocksize):
        i2 = min(i1 + blocksize, d)
        W1, U1, keep1 = W[:, i1:i2], U[i1:i2, i1:i2], keep[:, i1:i2]  # views: updated in place
        u_diag_sq = U1.diagonal().square()
        Err1 = torch.zeros_like(W1)
        if mask is None and not use_nm:
            n_prune = round(sparsity * rows * i2) - round(sparsity * rows * i1)
            keep1.copy_(keep_largest((W1.square() / u_diag_sq).reshape(1, -1), n_prune).reshape(W1.shape))
        for i in range(i2 - i1):
            if use_nm and i % m == 0:
                keep1[:, i:i + m] = nm_keep(W1[:, i:i + m].square() / u_diag_sq[i:i + m], n, m)
            q = W1[:, i] * keep1[:, i]
            err = (W1[:, i] - q) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            W1[:, i] = q  # exactly the kept value or 0, not up to rounding
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return W.to(weight.dtype), keep
