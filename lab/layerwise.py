"""Walking a lab `GPT` one decoder layer at a time on calibration data (SparseGPT, Wanda, GPTQ, AWQ).

One-shot compression methods change the linears of decoder layer i using statistics of the inputs
that layer really sees. `for_each_layer` does the bookkeeping they share:

1. X⁽⁰⁾ = embed(calibration ids), shape (n_samples, T, C);
2. for layer i: run it on X⁽ⁱ⁾ with forward hooks on its linears, which accumulate, per distinct
   input (q/k/v read one input, gate/up read one input), an `InputStats`: the Gram matrix
   G = Σ_t x_t x_tᵀ (float64), the token count N, max_t |x_tj| and Σ_t |x_tj| per input feature j;
3. call ``process(i, block, stats)``, which changes the block in place (prunes, quantizes, rescales);
4. X⁽ⁱ⁺¹⁾ = layer_i(X⁽ⁱ⁾) with the *changed* layer, so layer i+1 is calibrated on the inputs it
   will see after compression.

All linears of one layer see the activations of the unchanged layer (as in the papers' reference
code). The squared output error of replacing W by Ŵ follows from G without storing X:
‖WX − ŴX‖²_F = tr(ΔW G ΔWᵀ), ΔW = W − Ŵ (`output_error`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from lab.core.checks import check_choice, check_int, check_matrix, check_tensor
from lab.models.gpt import rope_cos_sin

__all__ = [
    "InputStats", "output_error", "relative_output_error", "check_calib_tokens", "check_layers", "for_each_layer",
    "capture_inputs",
]

# Linears of one decoder layer grouped by the input they read: the first name of a group hosts the hook.
INPUT_GROUPS = (
    ("attn.q_proj", "attn.k_proj", "attn.v_proj"),
    ("attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)
LINEARS = tuple(name for group in INPUT_GROUPS for name in group)


class InputStats:
    """Forward hook accumulating statistics of a Linear's input x (…, C_in) over every token t.

    ``gram`` G = Σ_t x_t x_tᵀ (C_in, C_in) float64, ``n_tokens`` N, ``abs_max`` max_t |x_tj| (C_in,)
    float32 and ``abs_sum`` Σ_t |x_tj| (C_in,) float64.
    """

    def __init__(self) -> None:
        self.gram: torch.Tensor | None = None
        self.abs_max: torch.Tensor | None = None
        self.abs_sum: torch.Tensor | None = None
        self.n_tokens = 0

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()  # (B·T, C_in)
        gram, abs_max, abs_sum = x.T @ x, x.abs().amax(0).float(), x.abs().sum(0)
        if self.gram is None:
            self.gram, self.abs_max, self.abs_sum = gram, abs_max, abs_sum
        else:
            self.gram += gram
            self.abs_max = torch.maximum(self.abs_max, abs_max)
            self.abs_sum += abs_sum
        self.n_tokens += x.shape[0]

    @property
    def abs_mean(self) -> torch.Tensor:
        """mean_t |x_tj| (C_in,) float32."""
        return (self.abs_sum / self.n_tokens).float()


def output_error(w: torch.Tensor, w_hat: torch.Tensor, gram: torch.Tensor) -> float:
    """‖WX − ŴX‖²_F = tr(ΔW G ΔWᵀ) in float64, for W, Ŵ (C_out, C_in) and G = X Xᵀ (C_in, C_in)."""
    shape = check_matrix("w", w).shape           # a (1, C_in) Ŵ would broadcast silently
    if check_matrix("w_hat", w_hat).shape != shape or check_matrix("gram", gram).shape != (shape[1], shape[1]):
        raise ValueError(f"w_hat must have w's shape {tuple(shape)} and gram ({shape[1]}, {shape[1]}), got "
                         f"{tuple(w_hat.shape)} and {tuple(gram.shape)}")
    delta = (w - w_hat).double()
    return ((delta @ gram.double()) * delta).sum().item()


def relative_output_error(w: torch.Tensor, w_hat: torch.Tensor, gram: torch.Tensor) -> float:
    """‖WX − ŴX‖² / ‖WX‖² = tr(ΔW G ΔWᵀ) / tr(W G Wᵀ)."""
    error, total = output_error(w, w_hat, gram), output_error(w, torch.zeros_like(w), gram)
    if total == 0:
        raise ValueError("w X is zero (w or gram is zero): the relative error is undefined")
    return error / total


def check_calib_tokens(model: nn.Module, calib_tokens: torch.Tensor) -> None:
    """Raise ValueError unless ``calib_tokens`` is a non-empty int64 (n_samples, seq_len), seq_len ≤ context, of
    ids in the vocabulary (TypeError when it is not a tensor)."""
    check_tensor("calib_tokens", calib_tokens)
    if calib_tokens.dim() != 2 or calib_tokens.dtype != torch.int64:
        raise ValueError(f"calib_tokens must be an int64 tensor of shape (n_samples, seq_len), got shape "
                         f"{tuple(calib_tokens.shape)}, {calib_tokens.dtype}")
    if calib_tokens.numel() == 0:
        raise ValueError(f"calib_tokens must not be empty, got shape {tuple(calib_tokens.shape)}")
    if calib_tokens.shape[1] > model.config.context_length:
        raise ValueError(f"calib_tokens seq_len={calib_tokens.shape[1]} exceeds "
                         f"context_length={model.config.context_length}")
    low, high = int(calib_tokens.min()), int(calib_tokens.max())
    if low < 0 or high >= model.config.vocab_size:
        raise ValueError(f"calib_tokens must hold ids in [0, vocab_size={model.config.vocab_size}), got values in "
                         f"[{low}, {high}]")


def check_layers(model: nn.Module, layers: Sequence[int] | None) -> list[int]:
    """Sorted distinct decoder-layer indices (all when None); ValueError outside [0, n_layer) or when empty,
    TypeError unless a sequence of ints."""
    n_layer = len(model.layers)
    if layers is not None:
        items = list(layers) if isinstance(layers, Iterable) and not isinstance(layers, (str, bytes)) else [None]
        if any(isinstance(i, bool) or not isinstance(i, int) for i in items):
            raise TypeError(f"layers must be a sequence of int layer indices, got {layers!r}")
        layers = items
    selected = sorted(set(range(n_layer) if layers is None else layers))
    if not selected or any(not 0 <= i < n_layer for i in selected):
        raise ValueError(f"layers must be indices in [0, {n_layer}) (at least one), got {layers}")
    return selected


@torch.no_grad()
def _run_layer(block: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               batch_size: int) -> torch.Tensor:
    """block(x) over the calibration batch (n_samples, T, C) in mini-batches."""
    return torch.cat([block(x[i:i + batch_size], cos, sin) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def for_each_layer(model: nn.Module, calib_tokens: torch.Tensor | None,
                   process: Callable[[int, nn.Module, dict[str, InputStats]], None], *,
                   layers: Sequence[int] | None = None, batch_size: int = 8, progress: bool = True,
                   desc: str = "layers") -> None:
    """Call ``process(i, model.layers[i], stats)`` for each selected decoder layer i, in order.

    ``calib_tokens``: (n_samples, seq_len) int64 ids, or None (then ``stats`` is empty and nothing
    is propagated). ``stats`` maps each linear's name in `LINEARS` to the `InputStats` of its input
    on X⁽ⁱ⁾; linears that share an input share one object. Layers not selected still propagate.
    """
    selected = check_layers(model, layers)
    if not callable(process):
        raise TypeError(f"process must be a callable process(i, block, stats), got {type(process).__name__}")
    check_int("batch_size", batch_size)
    check_choice("progress", progress, (True, False))
    if calib_tokens is not None:
        check_calib_tokens(model, calib_tokens)
    device = next(model.parameters()).device
    x = cos = sin = None
    if calib_tokens is not None:
        ids = calib_tokens.to(device)
        cos, sin = rope_cos_sin(ids.shape[1], model.config.head_dim, model.config.rope_theta, device)
        x = torch.cat([model.embed_tokens(ids[i:i + batch_size]) for i in range(0, len(ids), batch_size)])
    last = selected[-1] if selected else -1
    for i in tqdm(range(last + 1), desc=desc, disable=not progress):
        block = model.layers[i]
        stats: dict[str, InputStats] = {}
        if i in selected and x is not None:
            handles = []
            for group in INPUT_GROUPS:
                hook = InputStats()
                handles.append(block.get_submodule(group[0]).register_forward_hook(hook))
                stats.update({name: hook for name in group})
            try:
                _run_layer(block, x, cos, sin, batch_size)
            finally:
                for handle in handles:
                    handle.remove()
        if i in selected:
            process(i, block, stats)
        if x is not None and i < last:
            x = _run_layer(block, x, cos, sin, batch_size)  # inputs of layer i+1, after changing layer i


@torch.no_grad()
def capture_inputs(model: nn.Module, module: nn.Module | str, inputs: torch.Tensor) -> torch.Tensor:
    """X (N, C_in): every input row x_t that ``module`` receives while ``model(inputs)`` runs once.

    ``module``: a submodule of ``model`` (typically an ``nn.Linear``) or its qualified name
    ("layers.3.mlp.down_proj"); ``inputs``: what the model is called with, e.g. calibration ids
    (B, T) int64. The module's first positional input (…, C_in) is flattened over its leading
    dimensions, so N = B·T for a decoder linear, one row per token, in the order (b, t); when
    the module runs more than once, the calls' rows are concatenated in call order. The dtype
    and device are those of the activations (float32 for the book's model).

    X is the matrix whose Gram matrix XᵀX = Σ_t x_t x_tᵀ `InputStats` accumulates without storing
    X; keep X itself to study the activations (observers, histograms, `lab.prune.layer_hessian`,
    which takes Xᵀ: one column per token).
    """
    if isinstance(module, str):
        try:
            module = model.get_submodule(module)
        except AttributeError:
            raise ValueError(f"module={module!r} is not a submodule of the model") from None
    elif not isinstance(module, nn.Module):
        raise TypeError(f"module must be a submodule of model or its name, got {type(module).__name__}")
    elif not any(m is module for m in model.modules()):
        raise ValueError(f"module must be a submodule of model (or its name), got {type(module).__name__}")
    check_tensor("inputs", inputs)
    seen: list[torch.Tensor] = []

    def hook(mod: nn.Module, args: tuple, output: torch.Tensor) -> None:
        x = args[0].detach()
        seen.append(x.reshape(-1, x.shape[-1]))

    handle = module.register_forward_hook(hook)
    try:
        model(inputs)
    finally:
        handle.remove()
    if not seen:
        raise ValueError("module did not run during model(inputs): nothing was captured")
    return torch.cat(seen)
