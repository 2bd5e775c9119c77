"""Per-channel scale migration between activations and weights: SmoothQuant and AWQ.

For a linear y = x Wᵀ and any positive vector s (C_in,),

    y = (x · diag(s)⁻¹) (W · diag(s))ᵀ

so difficulty can be moved from the activation channel x_j to the weight column W[:, j] without
changing the function. The factor is *folded* into the operation that produces x, so it costs
nothing at run time: in a lab `GPT` block the inputs of q/k/v are RMSNorm(x)·γ_attn, those of
gate/up are RMSNorm(x)·γ_mlp (divide γ by s), and the input of down_proj is silu(gate)·up, linear
in up's output rows (divide the rows of W_up by s). These are the groups of `SCALE_GROUPS`.

SmoothQuant (Xiao et al. 2023) makes W8A8 work on models with activation outliers: with the
per-channel maxima over calibration data, and α ∈ [0, 1] the migration strength,

    s_j = max|X_j|^α / max|W_{:, j}|^(1−α)

(max over tokens for X, over the rows of every linear of the group for W), which equalises the two
ranges at α = 0.5. The paper smooths the norm-fed groups only (q/k/v and the first MLP layer).

`plant_outliers` runs the same equivalence backwards to give a small model the activation outliers of a large
one: with s_j = 1/α on a few channels j of each norm-fed group (and 1 elsewhere), the norm's gain γ_j becomes
α·γ_j, so channel j of every input of q/k/v (or gate/up) is α times larger, and column j of those linears is
divided by α: the products x_j W_{:, j} and so the function are unchanged (up to rounding), while per-tensor
activation quantization now meets the few large channels that large LLMs show (Dettmers et al. 2022).

AWQ (Lin et al. 2024) protects the weights of salient input channels in weight-only quantization:
s_j = mean|X_j|^α, normalised by sqrt(max s · min s), with α on a grid in [0, 1) chosen to minimise
the output error of the quantized group, Σ_W ‖WX − Q(W diag s) diag(s)⁻¹ X‖², computed exactly from
the Gram matrix G = X Xᵀ (`lab.layerwise.output_error`). α = 0 is plain round-to-nearest, so the
search never does worse than RTN on the calibration data. (AWQ's extra weight-clipping search is
left out.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lab.core.checks import check_float_tensor, check_fraction, check_int, check_matrix, check_number
from lab.layerwise import InputStats, output_error
from lab.models.gpt import check_gpt
from lab.quant.linear import check_linear_names, decoder_linear_names, observe_linear_inputs
from lab.quant.observers import ChannelAbsMaxObserver

# (module producing the input, the linears reading it) inside one decoder layer
SCALE_GROUPS = (
    ("attn_norm", ("attn.q_proj", "attn.k_proj", "attn.v_proj")),
    ("mlp_norm", ("mlp.gate_proj", "mlp.up_proj")),
    ("mlp.up_proj", ("mlp.down_proj",)),
)
SMOOTHQUANT_GROUPS = SCALE_GROUPS[:2]


@torch.no_grad()
def fold_scales(block: nn.Module, producer: str, linears: tuple[str, ...], s: torch.Tensor) -> None:
    """Divide the producer's output channel j by s_j and multiply column j of each linear by s_j, in place."""
    if not torch.is_tensor(s) or s.dim() != 1 or not (s > 0).all() or not torch.isfinite(s).all():
        raise ValueError("s must be a 1-D tensor of positive finite scales")
    prev = block.get_submodule(producer).weight
    if prev.shape[0] != s.shape[0]:
        raise ValueError(f"s has {s.shape[0]} entries but {producer} has {prev.shape[0]} output channels")
    prev.div_(s.to(prev).reshape(-1, *[1] * (prev.dim() - 1)))
    for name in linears:
        weight = block.get_submodule(name).weight
        weight.mul_(s.to(weight)[None, :])


def _check_weights(weights: list[torch.Tensor], in_features: int, source: str) -> None:
    """``weights``: a non-empty list of finite float matrices (C_out, ``in_features``) reading one input whose
    width ``source`` gives."""
    if not isinstance(weights, (list, tuple)):
        raise TypeError(f"weights must be a list of weight matrices (C_out, C_in), got {type(weights).__name__}")
    if not weights:
        raise ValueError("weights must hold at least one weight matrix, got an empty list")
    for i, w in enumerate(weights):
        if check_matrix(f"weights[{i}]", w).shape[1] != in_features:
            raise ValueError(f"weights[{i}] has shape {tuple(w.shape)}; it must have {in_features} input columns, "
                             f"as {source}")


def smoothing_factors(act_abs_max: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^α / max|W_{:, j}|^(1−α) (C_in,) float32; maxima clamped below at 1e-5."""
    check_fraction("alpha", alpha)
    if (check_float_tensor("act_abs_max", act_abs_max, 1) < 0).any():
        raise ValueError("act_abs_max must hold maxima of |x_j|, got negative entries")
    _check_weights(weights, act_abs_max.shape[0], f"act_abs_max has {act_abs_max.shape[0]} entries")
    w_max = torch.stack([w.detach().abs().amax(0).float() for w in weights]).amax(0).clamp(min=1e-5)
    return act_abs_max.float().clamp(min=1e-5).pow(alpha) / w_max.pow(1 - alpha)


@torch.no_grad()
def activation_abs_max(model: nn.Module, forward: Callable[[], object],
                       names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """max over the calibration tokens of |x_j| (C_in,) at the input of each linear in ``names`` (default: a lab
    `GPT`'s decoder linears) while ``forward()`` runs the calibration data: {"layers.0.attn.q_proj": …}."""
    if not callable(forward):
        raise TypeError(f"forward must be a callable running the calibration data, got {forward!r}")
    names = decoder_linear_names(model) if names is None else names
    observers = observe_linear_inputs(model, names, forward, ChannelAbsMaxObserver)
    unseen = [name for name, observer in observers.items() if observer.abs_max is None]
    if unseen:
        raise ValueError(f"forward() ran no input through {unseen[:3]}; it must run the calibration data through the "
                         "model")
    return {name: observer.abs_max for name, observer in observers.items()}


def group_smoothing_factors(model: nn.Module, act_stats: dict[str, torch.Tensor], groups: list[list[str]],
                            alpha: float = 0.5) -> dict[str, torch.Tensor]:
    """SmoothQuant factors s for each group of linears reading one input (one s per group, from the
    group's activation maxima and the maxima over all its weights): {linear name: s}."""
    check_fraction("alpha", alpha)
    if not isinstance(groups, (list, tuple)) or not all(isinstance(g, (list, tuple)) and g for g in groups):
        raise TypeError(f"groups must be a list of non-empty lists of linear names, got {groups!r}")
    check_linear_names(model, [name for group in groups for name in group])
    _check_act_stats(act_stats, [group[0] for group in groups])
    factors = {}
    for group in groups:
        s = smoothing_factors(act_stats[group[0]], [model.get_submodule(n).weight for n in group], alpha)
        factors.update({name: s for name in group})
    return factors


@torch.no_grad()
def smoothquant(model: nn.Module, act_stats: dict[str, torch.Tensor], alpha: float = 0.5) -> dict[str, torch.Tensor]:
    """Fold SmoothQuant factors into every decoder layer of a lab `GPT` in place (the function is unchanged).

    ``act_stats``: `activation_abs_max` of the model; α ∈ [0, 1]. Returns the factors s per group,
    keyed "layers.i.attn_norm" / "layers.i.mlp_norm".
    """
    check_gpt("model", model)
    check_fraction("alpha", alpha)
    _check_act_stats(act_stats, [f"layers.{i}.{linears[0]}" for i in range(len(model.layers))
                                 for _, linears in SMOOTHQUANT_GROUPS])
    factors = {f"layers.{i}.{producer}": smoothing_factors(act_stats[f"layers.{i}.{linears[0]}"],
                                                           [block.get_submodule(n).weight for n in linears], alpha)
               for i, block in enumerate(model.layers) for producer, linears in SMOOTHQUANT_GROUPS}
    for i, block in enumerate(model.layers):     # every factor is computed (and checked) before any is folded
        for producer, linears in SMOOTHQUANT_GROUPS:
            fold_scales(block, producer, linears, factors[f"layers.{i}.{producer}"])
    return factors


@torch.no_grad()
def plant_outliers(model: nn.Module, factor: float, n_channels: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Multiply the gain of ``n_channels`` channels of every norm of a lab `GPT`'s decoder layers by ``factor``
    (> 0; above 1 it plants outliers) and divide the matching input columns of the linears that read the norm by it, in place: the
    function is preserved (module docstring), the inputs of q/k/v and gate/up get α-times larger channels.
    The channels are drawn without replacement, per norm, from a generator seeded with ``seed``. Returns them,
    int64 (n_channels,), keyed "layers.i.attn_norm" / "layers.i.mlp_norm"."""
    check_gpt("model", model)
    factor = check_number("factor", factor, 0, closed=(False, True))
    d_model = model.layers[0].attn_norm.weight.shape[0]
    check_int("n_channels", n_channels, 1, d_model)
    check_int("seed", seed, 0)
    generator = torch.Generator().manual_seed(seed)
    planted = {}
    for i, block in enumerate(model.layers):
        for producer, linears in SMOOTHQUANT_GROUPS:
            channels = torch.randperm(d_model, generator=generator)[:n_channels].sort().values
            s = torch.ones(d_model, dtype=torch.float64)
            s[channels] = 1.0 / factor
            fold_scales(block, producer, linears, s)
            planted[f"layers.{i}.{producer}"] = channels
    return planted


def _check_act_stats(act_stats: dict[str, torch.Tensor], keys: list[str]) -> None:
    if not isinstance(act_stats, dict):
        raise TypeError(f"act_stats must be the dict activation_abs_max returns, got {type(act_stats).__name__}")
    for key in keys:
        if key not in act_stats:
            raise ValueError(f"act_stats has no entry {key!r}; compute it with activation_abs_max(model, forward)")


def awq_scale_search(weights: list[torch.Tensor], stats: InputStats,
                     quantize_weight: Callable[[torch.Tensor], torch.Tensor],
                     n_grid: int = 20) -> tuple[torch.Tensor, float, list[float]]:
    """AWQ's search over α ∈ {0, 1/n, …, (n−1)/n} for the linears ``weights`` reading one input.

    ``stats``: the input's `InputStats` (Gram matrix and mean |x_j|); ``quantize_weight``: W ↦ Ŵ
    (e.g. round-to-nearest at 4 bits, group 128). Returns (s (C_in,) float32, best α, output error
    Σ_W tr(ΔW G ΔWᵀ) for every α on the grid).

    The objective is the sum of the linears' own output errors; the reference AWQ code measures the
    error of the whole module's output (attention block or MLP) instead, and calibrates every layer
    on the unquantized model's activations where `lab.quant.quantize_model` walks the layers
    sequentially (layer i+1 sees the quantized layer i). The book's chapter 3 says so.
    """
    check_int("n_grid", n_grid)
    if not isinstance(stats, InputStats):
        raise TypeError(f"stats must be the InputStats of the input, got {type(stats).__name__}")
    if stats.gram is None:
        raise ValueError("stats has seen no input (stats.gram is None); run the calibration data through it first")
    _check_weights(weights, stats.gram.shape[0], f"stats.gram is {tuple(stats.gram.shape)}")
    if not callable(quantize_weight):
        raise TypeError(f"quantize_weight must be a callable W -> Ŵ, got {quantize_weight!r}")
    x_mean = stats.abs_mean.clamp(min=1e-8)
    errors, best = [], (float("inf"), None, 0.0)
    for k in range(n_grid):
        alpha = k / n_grid
        s = x_mean.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        err = 0.0
        for w in weights:
            w = w.detach().float()
            w_hat = quantize_weight(w * s[None, :]) / s[None, :]
            err += output_error(w, w_hat, stats.gram)
        errors.append(err)
        if err < best[0]:
            best = (err, s, alpha)
    return best[1], best[2], errors
