"""Pruning a whole lab `GPT`, one decoder layer after another (the SparseGPT / Wanda recipe).

For decoder layer i = 0 … L−1:

1. run layer i on its calibration inputs X⁽ⁱ⁾ (n_samples, T, C), with forward hooks on its
   linears accumulating, per distinct input, the Gram matrix G = Σ_t x_t x_tᵀ (float64) and the
   token count N over all n_samples·T tokens (q/k/v read one input, gate/up read one input:
   each shared input is captured once);
2. prune every linear W (C_out, C_in) of the layer from its own statistics:
   magnitude — ``magnitude_mask(W, s)`` (needs no calibration data);
   wanda     — ``wanda_mask(W, ‖X_j‖₂, s)`` with ‖X_j‖₂ = sqrt(G_jj), the norm of input feature j
               over all calibration tokens;
   sparsegpt — ``sparsegpt_prune(W, H, s)`` with H = (2/N)·G, accumulated and handed over in
               float64 (sums of tens of thousands of outer products lose digits in float32;
               `sparsegpt_prune` works in float64 too);
3. recompute X⁽ⁱ⁺¹⁾ = layer_i(X⁽ⁱ⁾) with the *pruned* layer, so that layer i+1 is pruned for
   the inputs it will really see.

All linears of one layer see the activations of the unpruned layer (as in the papers'
reference code). The relative reconstruction error of each linear follows from G without
storing X:  ‖WX − ŴX‖² / ‖WX‖² = tr(ΔW G ΔWᵀ) / tr(W G Wᵀ),  ΔW = W − Ŵ.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from lab.models.gpt import rope_cos_sin
from lab.prune.masks import _check_nm_sparsity, magnitude_mask, nm_mask, wanda_mask
from lab.prune.sparsegpt import sparsegpt_prune

METHODS = ("magnitude", "wanda", "sparsegpt")
# Linears of one decoder layer grouped by the input they read: the first name of a group hosts the hook.
INPUT_GROUPS = (
    ("attn.q_proj", "attn.k_proj", "attn.v_proj"),
    ("attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)
LINEARS = tuple(name for group in INPUT_GROUPS for name in group)


class _GramHook:
    """Forward hook accumulating G = Σ x xᵀ (float64) and the token count N of a Linear's input."""

    def __init__(self) -> None:
        self.gram: torch.Tensor | None = None
        self.n_tokens = 0

    def __call__(self, module: nn.Linear, inputs: tuple, output: torch.Tensor) -> None:
        x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()  # (B·T, C_in)
        self.gram = x.T @ x if self.gram is None else self.gram + x.T @ x
        self.n_tokens += x.shape[0]


def _check_args(model: nn.Module, method: str, sparsity: float, calib_tokens: torch.Tensor | None,
                n: int | None, m: int | None) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    for d_in in {lin.in_features for lin in model.modules() if isinstance(lin, nn.Linear)}:
        _check_nm_sparsity(sparsity, n, m, d_in)  # the masks' own check, for every input width
    if calib_tokens is None:
        if method != "magnitude":
            raise ValueError(f"method={method!r} needs calib_tokens, got None")
        return
    if not isinstance(calib_tokens, torch.Tensor) or calib_tokens.dim() != 2 or calib_tokens.dtype != torch.int64:
        got = (f"shape {tuple(calib_tokens.shape)}, {calib_tokens.dtype}" if isinstance(calib_tokens, torch.Tensor)
               else type(calib_tokens).__name__)
        raise ValueError(f"calib_tokens must be an int64 tensor of shape (n_samples, seq_len), got {got}")
    if calib_tokens.numel() == 0:
        raise ValueError(f"calib_tokens must not be empty, got shape {tuple(calib_tokens.shape)}")
    if calib_tokens.shape[1] > model.config.context_length:
        raise ValueError(f"calib_tokens seq_len={calib_tokens.shape[1]} exceeds "
                         f"context_length={model.config.context_length}")


def _prune_linear(weight: torch.Tensor, gram: torch.Tensor | None, n_tokens: int, method: str, sparsity: float,
                  n: int | None, m: int | None, blocksize: int, percdamp: float) -> torch.Tensor:
    """The pruned weight Ŵ (same shape and dtype as ``weight``) by ``method``."""
    w = weight.detach().float()
    if method == "magnitude":
        mask = magnitude_mask(w, sparsity) if n is None else nm_mask(w, n=n, m=m)
    elif method == "wanda":
        mask = wanda_mask(w, gram.diagonal().sqrt().float(), sparsity, n=n, m=m)
    else:
        hessian = 2.0 / n_tokens * gram
        w, mask = sparsegpt_prune(w, hessian, sparsity, n=n, m=m, blocksize=blocksize, percdamp=percdamp)
    return (w * mask).to(weight.dtype)


def _relative_error(w: torch.Tensor, w_hat: torch.Tensor, gram: torch.Tensor) -> float:
    """‖WX − ŴX‖² / ‖WX‖² = tr(ΔW G ΔWᵀ) / tr(W G Wᵀ) in float64."""
    w, delta = w.double(), (w - w_hat).double()
    return ((delta @ gram) * delta).sum().item() / ((w @ gram) * w).sum().item()


@torch.no_grad()
def _run_layer(block: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               batch_size: int) -> torch.Tensor:
    """block(x) over the calibration batch (n_samples, T, C) in mini-batches."""
    return torch.cat([block(x[i:i + batch_size], cos, sin) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def prune_model(model: nn.Module, method: str, sparsity: float, calib_tokens: torch.Tensor | None,
                n: int | None = None, m: int | None = None, blocksize: int = 128, percdamp: float = 0.01,
                progress: bool = True, layers: Sequence[int] | None = None,
                batch_size: int = 8) -> dict[str, dict[str, float | None]]:
    """Prune the linears of a lab `GPT`'s decoder layers in place, layer by layer.

    ``calib_tokens``: (n_samples, seq_len) int64 calibration ids; may be None for magnitude, which
    uses them only for the reported errors.
    ``sparsity``: fraction s ∈ [0, 1) of weights set to zero per linear (per row for Wanda);
    with ``n``, ``m`` set, the N:M pattern instead (n kept in every m along the input).
    ``layers``: indices of the decoder layers to prune (default: all); the others still
    propagate the calibration batch. Embeddings, norms and ``lm_head`` are never touched.

    Returns ``{"layers.{i}.attn.q_proj": {"sparsity": fraction of zero weights,
    "error": ‖WX − ŴX‖² / ‖WX‖² on the calibration inputs (None without calibration)}, …}``.
    """
    _check_args(model, method, sparsity, calib_tokens, n, m)
    n_layer = len(model.layers)
    selected = sorted(set(range(n_layer) if layers is None else layers))
    if any(not 0 <= i < n_layer for i in selected):
        raise ValueError(f"layers must be indices in [0, {n_layer}), got {list(layers)}")
    device = next(model.parameters()).device
    x = cos = sin = None
    if calib_tokens is not None:
        ids = calib_tokens.to(device)
        cos, sin = rope_cos_sin(ids.shape[1], model.config.head_dim, model.config.rope_theta, device)
        x = torch.cat([model.embed_tokens(ids[i:i + batch_size]) for i in range(0, len(ids), batch_size)])
    report: dict[str, dict[str, float | None]] = {}
    last = selected[-1] if selected else -1
    for i in tqdm(range(last + 1), desc=f"prune ({method})", disable=not progress):
        block = model.layers[i]
        hooks: dict[str, _GramHook] = {}
        if i in selected and x is not None:
            handles = []
            for group in INPUT_GROUPS:
                hook = _GramHook()
                handles.append(block.get_submodule(group[0]).register_forward_hook(hook))
                hooks.update({name: hook for name in group})
            try:
                _run_layer(block, x, cos, sin, batch_size)
            finally:
                for handle in handles:
                    handle.remove()
        if i in selected:
            for name in LINEARS:
                weight = block.get_submodule(name).weight
                hook = hooks.get(name)
                gram = None if hook is None else hook.gram
                w_hat = _prune_linear(weight, gram, 0 if hook is None else hook.n_tokens, method, sparsity,
                                      n, m, blocksize, percdamp)
                error = None if gram is None else _relative_error(weight, w_hat, gram)
                weight.copy_(w_hat)
                report[f"layers.{i}.{name}"] = {"sparsity": (weight == 0).float().mean().item(), "error": error}
        if x is not None and i < last:
            x = _run_layer(block, x, cos, sin, batch_size)  # inputs of layer i+1, after pruning layer i
    return report


def sparsity_of(model: nn.Module) -> float:
    """Fraction of exactly-zero weights over all decoder-layer linears of a lab `GPT`."""
    zeros = total = 0
    for block in model.layers:
        for name in LINEARS:
            w = block.get_submodule(name).weight
            zeros += (w == 0).sum().item()
            total += w.numel()
    return zeros / total


def layer_sensitivity(model: nn.Module, tokens: torch.Tensor | None, method: str, sparsity: float,
                      eval_fn: Callable[[nn.Module], float], progress: bool = True, **prune_kwargs) -> list[float]:
    """eval_fn (e.g. perplexity) of a copy of ``model`` with only decoder layer i pruned, for each i.

    ``tokens``: (n_samples, seq_len) int64 calibration ids as for `prune_model`; ``model`` is
    left unchanged. Returns a list of L floats, entry i for layer i.
    """
    _check_args(model, method, sparsity, tokens, prune_kwargs.get("n"), prune_kwargs.get("m"))
    scores = []
    for i in tqdm(range(len(model.layers)), desc="layer sensitivity", disable=not progress):
        pruned = copy.deepcopy(model)
        prune_model(pruned, method, sparsity, tokens, progress=False, layers=[i], **prune_kwargs)
        scores.append(float(eval_fn(pruned)))
    return scores
