"""Pruning a whole lab `GPT`, one decoder layer after another (the SparseGPT / Wanda recipe).

`lab.layerwise.for_each_layer` walks the decoder layers on calibration data and hands each layer's
input statistics (Gram matrix G = Σ_t x_t x_tᵀ in float64, token count N) to the pruning step, which
prunes every linear W (C_out, C_in) of the layer from its own statistics:

    magnitude — ``magnitude_mask(W, s)`` (needs no calibration data);
    row_magnitude — the same score |W_ij| compared within each output row, as Wanda compares its score
                (``keep_top_fraction(|W|, s, per_row=True)``): the control that separates Wanda's
                activation norms from its per-row comparison;
    wanda     — ``wanda_mask(W, ‖X_j‖₂, s)`` with ‖X_j‖₂ = sqrt(G_jj), the norm of input feature j
                over all calibration tokens;
    sparsegpt — ``sparsegpt_prune(W, H, s)`` with H = (2/N)·G, accumulated and handed over in
                float64 (sums of tens of thousands of outer products lose digits in float32;
                `sparsegpt_prune` works in float64 too).

Layer i+1 is then calibrated on the outputs of the *pruned* layer i. The relative reconstruction
error of each linear follows from G without storing X:
‖WX − ŴX‖² / ‖WX‖² = tr(ΔW G ΔWᵀ) / tr(W G Wᵀ),  ΔW = W − Ŵ.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lab.core.checks import check_choice, check_int, check_matrix, check_number
from lab.layerwise import LINEARS, InputStats, check_calib_tokens, check_layers, for_each_layer, relative_output_error
from lab.models.gpt import check_gpt
from lab.prune.masks import check_nm_sparsity, keep_top_fraction, magnitude_mask, nm_mask, wanda_mask
from lab.prune.obs import layer_hessian, reconstruction_error
from lab.prune.sparsegpt import sparsegpt_prune

METHODS = ("magnitude", "row_magnitude", "wanda", "sparsegpt")
NEEDS_NO_DATA = ("magnitude", "row_magnitude")


def layer_errors(W: torch.Tensor, X: torch.Tensor, sparsity: float, n: int | None = None,
                 m: int | None = None) -> dict[str, float]:
    """Relative error ‖WX − ŴX‖²_F / ‖WX‖²_F of each method pruning one layer W (d_out, d_in)
    to ``sparsity``, on inputs X (d_in, N), both float64: {"magnitude", "wanda", "sparsegpt"}.

    Without n, m the masks are unstructured (magnitude global over W, Wanda per row, SparseGPT per
    block). With n, m (given together, m dividing d_in, ``sparsity`` = 1 − n/m) every method keeps
    exactly n of each m consecutive weights of a row: magnitude by |W_ij| (``nm_mask``), Wanda by
    |W_ij|·‖X_j‖₂, SparseGPT by its OBS saliency. A ValueError names a bad sparsity, n or m.
    """
    check_matrix("W", W)
    if check_matrix("X", X).shape[0] != W.shape[1]:
        raise ValueError(f"X must have shape (d_in, N) = ({W.shape[1]}, N) for W of shape {tuple(W.shape)}, "
                         f"got {tuple(X.shape)}")
    use_nm = check_nm_sparsity(sparsity, n, m, W.shape[1])
    base = (W @ X).pow(2).sum().item()
    if base == 0:
        raise ValueError("W @ X is zero (W or X is all zeros): the relative errors would divide by 0")
    hats = {"magnitude": W * (nm_mask(W, n, m) if use_nm else magnitude_mask(W, sparsity)),
            "wanda": W * wanda_mask(W, X.norm(dim=1), sparsity, n=n, m=m),
            "sparsegpt": sparsegpt_prune(W, layer_hessian(X), sparsity, n=n, m=m)[0]}
    return {method: reconstruction_error(W, W_hat, X) / base for method, W_hat in hats.items()}


def _check_args(model: nn.Module, method: str, sparsity: float, calib_tokens: torch.Tensor | None,
                n: int | None = None, m: int | None = None, blocksize: int = 128, percdamp: float = 0.01,
                layers: Sequence[int] | None = None, batch_size: int = 8) -> None:
    check_gpt("model", model)
    check_choice("method", method, METHODS)
    check_int("blocksize", blocksize)
    check_number("percdamp", percdamp, low=0)
    check_int("batch_size", batch_size)
    check_layers(model, layers)
    for d_in in {lin.in_features for lin in model.modules() if isinstance(lin, nn.Linear)}:
        check_nm_sparsity(sparsity, n, m, d_in)  # the masks' own check, for every input width
    if calib_tokens is None:
        if method not in NEEDS_NO_DATA:
            raise ValueError(f"method={method!r} needs calib_tokens, got None")
        return
    check_calib_tokens(model, calib_tokens)


def _prune_linear(weight: torch.Tensor, stats: InputStats | None, method: str, sparsity: float,
                  n: int | None, m: int | None, blocksize: int, percdamp: float) -> torch.Tensor:
    """The pruned weight Ŵ (same shape and dtype as ``weight``) by ``method``."""
    w = weight.detach().float()
    if method == "magnitude":
        mask = magnitude_mask(w, sparsity) if n is None else nm_mask(w, n=n, m=m)
    elif method == "row_magnitude":
        mask = keep_top_fraction(w.abs(), sparsity, per_row=True) if n is None else nm_mask(w, n=n, m=m)
    elif method == "wanda":
        mask = wanda_mask(w, stats.gram.diagonal().sqrt().float(), sparsity, n=n, m=m)
    else:
        hessian = 2.0 / stats.n_tokens * stats.gram
        w, mask = sparsegpt_prune(w, hessian, sparsity, n=n, m=m, blocksize=blocksize, percdamp=percdamp)
    return (w * mask).to(weight.dtype)


@torch.no_grad()
def prune_model(model: nn.Module, method: str, sparsity: float, calib_tokens: torch.Tensor | None,
                n: int | None = None, m: int | None = None, blocksize: int = 128, percdamp: float = 0.01,
                progress: bool = True, layers: Sequence[int] | None = None,
                batch_size: int = 8) -> dict[str, dict[str, float | None]]:
    """Prune the linears of a lab `GPT`'s decoder layers in place, layer by layer.

    ``calib_tokens``: (n_samples, seq_len) int64 calibration ids; may be None for (row_)magnitude, which
    uses them only for the reported errors.
    ``sparsity``: fraction s ∈ [0, 1) of weights set to zero per linear (per row for Wanda and row_magnitude);
    with ``n``, ``m`` set, the N:M pattern instead (n kept in every m along the input).
    ``layers``: indices of the decoder layers to prune (default: all); the others still
    propagate the calibration batch. Embeddings, norms and ``lm_head`` are never touched.

    Returns ``{"layers.{i}.attn.q_proj": {"sparsity": fraction of zero weights,
    "error": ‖WX − ŴX‖² / ‖WX‖² on the calibration inputs (None without calibration)}, …}``.
    """
    _check_args(model, method, sparsity, calib_tokens, n, m, blocksize, percdamp, layers, batch_size)
    report: dict[str, dict[str, float | None]] = {}

    def prune_layer(i: int, block: nn.Module, stats: dict[str, InputStats]) -> None:
        for name in LINEARS:
            weight = block.get_submodule(name).weight
            w_hat = _prune_linear(weight, stats.get(name), method, sparsity, n, m, blocksize, percdamp)
            error = relative_output_error(weight, w_hat, stats[name].gram) if name in stats else None
            weight.copy_(w_hat)
            report[f"layers.{i}.{name}"] = {"sparsity": (weight == 0).float().mean().item(), "error": error}

    for_each_layer(model, calib_tokens, prune_layer, layers=layers, batch_size=batch_size, progress=progress,
                   desc=f"prune ({method})")
    return report


def sparsity_of(model: nn.Module) -> float:
    """Fraction of exactly-zero weights over all decoder-layer linears of a lab `GPT`."""
    check_gpt("model", model)
    zeros = total = 0
    for block in model.layers:
        for name in LINEARS:
            w = block.get_submodule(name).weight
            zeros += (w == 0).sum().item()
            total += w.numel()
    return zeros / total


def layer_sensitivity(model: nn.Module, calib_tokens: torch.Tensor | None, method: str, sparsity: float,
                      eval_fn: Callable[[nn.Module], Any], progress: bool = True, **prune_kwargs) -> list:
    """eval_fn (e.g. perplexity) of a copy of ``model`` with only decoder layer i pruned, for each i.

    ``calib_tokens``: (n_samples, seq_len) int64 calibration ids as for `prune_model`; ``model`` is
    left unchanged. Returns a list of L results of eval_fn (a perplexity, or the per-token losses
    of `lab.perplexity.EvalSample.token_losses` for paired comparisons), entry i for layer i.
    """
    unknown = sorted(set(prune_kwargs) - {"n", "m", "blocksize", "percdamp", "batch_size"})
    if unknown:
        raise TypeError(f"prune_kwargs {unknown} are not allowed; use n, m, blocksize, percdamp, batch_size")
    if not callable(eval_fn):
        raise TypeError(f"eval_fn must be callable (model → result), got {eval_fn!r}")
    _check_args(model, method, sparsity, calib_tokens, **prune_kwargs)
    scores = []
    for i in tqdm(range(len(model.layers)), desc="layer sensitivity", disable=not progress):
        pruned = copy.deepcopy(model)
        prune_model(pruned, method, sparsity, calib_tokens, progress=False, layers=[i], **prune_kwargs)
        scores.append(eval_fn(pruned))
    return scores
