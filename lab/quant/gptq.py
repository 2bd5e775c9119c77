"""GPTQ (Frantar, Ashkboos, Hoefler & Alistarh 2023, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers"), written from the paper; the authors' code,
github.com/IST-DASLab/gptq ``gptq.py`` (``GPTQ.fasterquant``), was read to match its conventions
(damping, dead inputs, act-order, static groups). One convention differs: the reference's "symmetric"
grid keeps all 2^b codes (s = 2·max|w| / (2^b − 1), zero point fixed at 2^(b−1)), while
`lab.quant.quantize`'s symmetric grid is ±(2^(b−1) − 1), one code fewer (book chapter 3 explains this).

Quantize W (rows, d) to minimise ‖WX − ŴX‖² with H = 2XXᵀ/N, the same objective as SparseGPT
(`lab.prune.sparsegpt`) with "prune" replaced by "round to the grid". Columns are visited left to
right; column j is rounded, q_j = Q(w_j), and the error is pushed onto the columns not yet rounded
through the inverse Hessian of the free columns F_j = {j, …, d−1}. With U the upper Cholesky factor
of H⁻¹ (Uᵀ U = (H + λI)⁻¹, `lab.prune.obs.weight_and_inverse_hessian_cholesky`):

    err_j = (w_j − q_j) / U_jj,        w[j:] ← w[j:] − err_j · U[j, j:]

(the OBS update for fixing w_j at q_j). In blocks of B columns: inside the block each column updates
the rest of the block; the columns right of the block receive W[:, i2:] −= Err · U[i1:i2, i2:] at once.
A naive implementation recomputes the inverse of H restricted to F_j for every j; the Cholesky rows
hold exactly these inverses, which turns O(d⁴) into O(d³) and is numerically stable.

Grids: per output channel (``group_size=None``: one (s, z) per row from the min–max of the whole row),
or per group of g columns: (s, z) of group G are computed when the sweep reaches its first column,
from the *current* (already error-corrected) weights of the group, including the updates still
pending from the current block, so that the result does not depend on the blocksize. Here the
reference differs: it rounds inside a copy of the block (``W1 = W[:, i1:i2].clone()``) and takes the
group's min–max from ``W``, which lacks the current block's updates until the block ends. The two
agree when every group starts at a block boundary (g a multiple of the blocksize, as with the usual
g = 128 and the default blocksize 128); for g < blocksize (the book's g = 64 with blocksize 128) the groups that start
inside a block get, in the reference, a grid from weights without the corrections of the block's
earlier columns, and its result then depends on the blocksize. With
``actorder`` the columns are visited in order of decreasing H_jj (the most active inputs first, while
many free columns remain to absorb their error); the group grid is then fixed beforehand from the
original weights ("static groups", the reference's ``static_groups``), so that group G still covers the
original columns G·g … G·g+g−1 and the packed layout of `lab.formats.int4` applies unchanged.
"""

from __future__ import annotations

import torch

from lab.core.checks import check_choice, check_divisor, check_int, check_matrix
from lab.prune.obs import weight_and_inverse_hessian_cholesky
from lab.quant.affine import QuantizedTensor, check_grid, grid, range_qparams


def _check_gptq_args(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int | None,
                     actorder: bool, blocksize: int, symmetric: bool) -> None:
    check_matrix("weight", weight)
    if check_matrix("hessian", hessian).shape != (weight.shape[1],) * 2:  # before act-order reads its diagonal
        raise ValueError(f"hessian must have shape (in_features, in_features) = {(weight.shape[1],) * 2}, "
                         f"got {tuple(hessian.shape)}")
    check_grid(bits, symmetric)
    check_choice("actorder", actorder, (False, True))
    if group_size is not None:  # None: one group per output channel
        check_divisor("group_size", group_size, weight.shape[1], "in_features")
    check_int("blocksize", blocksize)


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int | None = None,
                  actorder: bool = False, percdamp: float = 0.01, blocksize: int = 128,
                  symmetric: bool = False) -> QuantizedTensor:
    """Quantize W (rows, d) with GPTQ given H (d, d); returns a QuantizedTensor along axis 0.

    bits ∈ [2, 8]; ``group_size`` None (per channel) or a divisor of d; ``actorder`` visits columns by
    decreasing H_jj (static groups); ``percdamp`` ≥ 0: λ = percdamp·mean(diag H); ``blocksize`` ≥ 1
    columns per lazy-update block. Arithmetic in float64; `dequantize` of the result is Ŵ.
    """
    _check_gptq_args(weight, hessian, bits, group_size, actorder, blocksize, symmetric)
    rows, d = weight.shape
    qmin, qmax = grid(bits, symmetric)
    perm = torch.argsort(torch.as_tensor(hessian).diagonal(), descending=True, stable=True) if actorder \
        else torch.arange(d)
    hessian_p = hessian[perm][:, perm] if actorder else hessian
    W, U = weight_and_inverse_hessian_cholesky(weight[:, perm], hessian_p, percdamp)
    codes = torch.zeros(rows, d, dtype=torch.int16, device=W.device)

    def row_grid(columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return range_qparams(columns.amin(1).float(), columns.amax(1).float(), bits, symmetric)

    n_groups = 1 if group_size is None else d // group_size
    scale = torch.zeros(rows, n_groups, device=W.device)
    zero_point = torch.zeros(rows, n_groups, dtype=torch.int32, device=W.device)
    if group_size is None or actorder:  # the grid is fixed before the sweep
        original = W[:, torch.argsort(perm)]
        for g in range(n_groups):
            cols = original if group_size is None else original[:, g * group_size:(g + 1) * group_size]
            scale[:, g], zero_point[:, g] = row_grid(cols)

    order = perm.tolist()
    current = None                                      # the group whose grid s, 1/s, z are at hand
    for i1 in range(0, d, blocksize):
        i2 = min(i1 + blocksize, d)
        W1, U1 = W[:, i1:i2], U[i1:i2, i1:i2]  # views: updated in place
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            j = order[i1 + i]                           # the original column being rounded
            g = 0 if group_size is None else j // group_size
            if group_size is not None and not actorder and j % group_size == 0:
                cols = W[:, j:j + group_size].clone()
                if j + group_size > i2:  # columns past the block still lack this block's pending update
                    cols[:, i2 - j:] -= Err1[:, :i] @ U[i1:i1 + i, i2:j + group_size]
                scale[:, g], zero_point[:, g] = row_grid(cols)
                current = None
            if g != current:
                current, s, inv_s, z = g, scale[:, g], 1.0 / scale[:, g], zero_point[:, g].float()
            q = torch.clamp(torch.round(W1[:, i].float() * inv_s) + z, qmin, qmax)   # `quantize_with`
            codes[:, j] = q
            err = (W1[:, i] - ((q - z) * s).double()) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    if group_size is None:
        return QuantizedTensor(codes, scale[:, 0].contiguous(), zero_point[:, 0].contiguous(), qmin, qmax, bits,
                               "channel", 0, None)
    return QuantizedTensor(codes, scale, zero_point, qmin, qmax, bits, "group", 0, group_size)
