"""Structured pruning of a lab `GPT`: remove whole attention heads and MLP channels, shrinking tensors.

Shapes per decoder layer: C = d_model, D = head dimension, H query heads, H_kv key/value heads,
g = H/H_kv query heads per kv head (query head h reads kv head h // g), F = MLP width.

* Head h owns rows h·D … (h+1)·D−1 of W_q (H·D, C) and the same columns of W_o (C, H·D);
  kv head j owns rows j·D … of W_k, W_v (H_kv·D, C).  Attention repeats every kv head g times,
  so after pruning every surviving kv head must still serve the *same* number g′ ≥ 1 of query
  heads. Allowed removals are therefore (a) whole kv groups — a kv head with all its g query
  heads, which removes its rows of W_k and W_v too — and (b) the same number of query heads from
  every remaining group; anything else raises ValueError. With H_kv = H (no GQA) any heads go.
* MLP channel c owns row c of W_gate and W_up (F, C) and column c of W_down (C, F).

Parameters removed: 2·C·D per query head (W_q rows, W_o columns), 2·C·D per kv head (W_k, W_v
rows), 3·C per MLP channel. Without a refit the result equals the unpruned model with the removed heads' W_o
columns and the removed channels' W_down columns set to zero.

Refit (``calib_tokens`` given): the linear that reads the removed units, W_o after heads go and
W_down after channels go, is refit by least squares to the unpruned layer's output on the calibration
inputs, Ŵ = W_K + W_R G_RK (G_KK + λI)⁻¹ (`lab.prune.refit.refit_columns`). The layers are visited in
order by `lab.layerwise.for_each_layer`: layer i is calibrated on the outputs of layers 0 … i−1 already
pruned and refit, and, as there, all linears of layer i see the activations of the unchanged layer i
(W_down's inputs are those of the unpruned attention of layer i).

Per-layer sizes: `Attention` and `MLP` read their head counts and widths from their weights'
shapes (the head dimension D stays that of the config), so shrinking the tensors is enough. A model with
per-layer widths no longer fits one `transformers` LlamaConfig, so `lab.models.pretrained.to_llama` refuses it.

Speed: `forward_flops` counts the FLOPs of a forward from the weights' shapes; F_dense / F_pruned is the
speed-up the fewer FLOPs allow (the output head stays whole, so it is less than the parameter ratio of
the layers), and `speedup_against_bound` judges a measured speed-up against it.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from lab.core.checks import check_choice, check_fraction, check_int, check_number
from lab.core.stats import verdict
from lab.layerwise import InputStats, check_calib_tokens, for_each_layer, relative_output_error
from lab.models.gpt import check_gpt
from lab.prune.refit import refit_columns


def _sizes(attn: nn.Module) -> tuple[int, int, int]:
    """(H, H_kv, D) of one attention module, from its weights."""
    D = attn.cfg.head_dim
    return attn.q_proj.out_features // D, attn.k_proj.out_features // D, D


def _keep(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
    """Shrink ``linear`` in place to the given output rows / input columns of its weight."""
    w = linear.weight.detach()
    if rows is not None:
        w = w[rows]
    if cols is not None:
        w = w[:, cols]
    linear.weight = nn.Parameter(w.clone(), requires_grad=linear.weight.requires_grad)
    linear.out_features, linear.in_features = w.shape


def _units(indices: torch.Tensor, size: int) -> torch.Tensor:
    """Row indices of the units ``indices`` of ``size`` consecutive rows each."""
    return (indices[:, None] * size + torch.arange(size)).flatten()


def _check_indices(what: str, layer: int, indices, limit: int) -> list[int]:
    if not isinstance(indices, (list, tuple, range, set)):
        raise TypeError(f"{what}[{layer}] must be a list of indices, got {indices!r}")
    idx = list(indices)
    for j, i in enumerate(idx):
        check_int(f"{what}[{layer}][{j}]", i, 0, limit - 1)
    if len(set(idx)) != len(idx):
        raise ValueError(f"{what}[{layer}] has repeated indices: {sorted(idx)}")
    if len(idx) == limit:
        raise ValueError(f"{what}[{layer}] removes all {limit} of layer {layer}; keep at least one")
    return sorted(idx)


def _check_layers(what: str, spec: dict | None, n_layer: int) -> dict:
    spec = {} if spec is None else spec
    if not isinstance(spec, dict):
        raise TypeError(f"{what} must be a dict {{layer index: [indices]}} or None, got {type(spec).__name__}")
    for i in spec:
        check_int(f"layer index of {what}", i, 0, n_layer - 1)
    return spec


def _kept_heads(attn: nn.Module, layer: int, removed: list[int]) -> tuple[list[int], list[int]]:
    """(kept query heads, kept kv heads) after removing ``removed``; ValueError if groups end up unequal."""
    H, H_kv, _ = _sizes(attn)
    g = H // H_kv
    keep_q = [h for h in range(H) if h not in removed]
    per_group = [sum(h // g == j for h in keep_q) for j in range(H_kv)]
    keep_kv = [j for j in range(H_kv) if per_group[j]]
    if len({per_group[j] for j in keep_kv}) != 1:
        raise ValueError(f"heads[{layer}]={removed} leaves kv groups with unequal query heads {per_group} "
                         f"(H={H}, H_kv={H_kv}, query head h uses kv head h // {g}); remove whole groups or "
                         f"the same number of heads from every group")
    return keep_q, keep_kv


def _prune_heads(attn: nn.Module, keep_q: list[int], keep_kv: list[int]) -> torch.Tensor:
    """Shrink W_q, W_k, W_v, W_o to the kept heads; returns the kept columns of W_o (H'·D,)."""
    D = attn.cfg.head_dim
    q_rows, kv_rows = _units(torch.tensor(keep_q), D), _units(torch.tensor(keep_kv), D)
    _keep(attn.q_proj, rows=q_rows)
    _keep(attn.k_proj, rows=kv_rows)
    _keep(attn.v_proj, rows=kv_rows)
    _keep(attn.o_proj, cols=q_rows)
    return q_rows


def _prune_channels(mlp: nn.Module, removed: list[int]) -> torch.Tensor:
    """Shrink W_gate, W_up, W_down to the kept channels; returns the kept columns of W_down (F',)."""
    keep = torch.tensor([c for c in range(mlp.up_proj.out_features) if c not in removed])
    _keep(mlp.gate_proj, rows=keep)
    _keep(mlp.up_proj, rows=keep)
    _keep(mlp.down_proj, cols=keep)
    return keep


def _prune_layer(block: nn.Module, head_plan: tuple[list[int], list[int]] | None,
                 channels: list[int] | None) -> dict[str, torch.Tensor]:
    """Remove one layer's planned heads and channels; {reading linear's name: its kept input columns}."""
    kept = {}
    if head_plan is not None:
        kept["attn.o_proj"] = _prune_heads(block.attn, *head_plan)
    if channels:
        kept["mlp.down_proj"] = _prune_channels(block.mlp, channels)
    return kept


def _prune_and_refit(model: nn.Module, calib_tokens: torch.Tensor, head_plans: dict, mlp_channels: dict,
                     percdamp: float, batch_size: int, progress: bool) -> dict[str, dict[str, float]]:
    """Prune layer by layer and refit W_o / W_down (`lab.prune.refit.refit_columns`) on sequential inputs.

    Returns {"layers.i.attn.o_proj": {"error_pruned": ‖WX − W_K X_K‖² / ‖WX‖², "error_refit":
    ‖WX − ŴX_K‖² / ‖WX‖²}, …} on the calibration inputs of each refit linear.
    """
    errors: dict[str, dict[str, float]] = {}

    def process(i: int, block: nn.Module, stats: dict[str, InputStats]) -> None:
        full = {name: block.get_submodule(name).weight.detach().clone() for name in ("attn.o_proj", "mlp.down_proj")}
        for name, cols in _prune_layer(block, head_plans.get(i), mlp_channels.get(i)).items():
            w, gram = full[name], stats[name].gram
            w_refit = refit_columns(w, gram, cols, percdamp)
            block.get_submodule(name).weight.copy_(w_refit)
            kept_only, refit = torch.zeros_like(w), torch.zeros_like(w)
            kept_only[:, cols], refit[:, cols] = w[:, cols], w_refit
            errors[f"layers.{i}.{name}"] = {"error_pruned": relative_output_error(w, kept_only, gram),
                                            "error_refit": relative_output_error(w, refit, gram)}

    layers = sorted(set(head_plans) | {i for i, removed in mlp_channels.items() if removed})
    if layers:
        for_each_layer(model, calib_tokens, process, layers=layers, batch_size=batch_size, progress=progress,
                       desc="structured prune + refit")
    return errors


@torch.no_grad()
def structured_prune(model: nn.Module, heads: dict[int, list[int]] | None = None,
                     mlp_channels: dict[int, list[int]] | None = None, *, calib_tokens: torch.Tensor | None = None,
                     percdamp: float = 0.01, batch_size: int = 8, progress: bool = False) -> dict:
    """Physically remove query heads and MLP channels from a lab `GPT`, in place.

    ``heads``: {layer: query-head indices to remove} (see the module docstring for which sets are
    allowed under grouped-query attention); ``mlp_channels``: {layer: channel indices to remove}.
    Indices refer to the layer's current heads / channels. ``calib_tokens`` (n_samples, seq_len) int64:
    refit W_o and W_down of the pruned layers by least squares on these inputs, layer after layer (module
    docstring; damping ``percdamp`` ≥ 0, ``batch_size`` sequences per forward); None: no refit. All
    arguments are checked before anything changes. Returns {"params_before", "params_after",
    "params_removed", "layers": [{"n_head", "n_kv_head", "d_ff"} per layer], "refit": {"layers.i.attn.o_proj":
    {"error_pruned", "error_refit"}, …} (relative output errors on the calibration inputs; empty without
    calib_tokens)}.
    """
    n_layer = len(check_gpt("model", model).layers)
    heads = _check_layers("heads", heads, n_layer)
    mlp_channels = _check_layers("mlp_channels", mlp_channels, n_layer)
    heads = {i: _check_indices("heads", i, v, _sizes(model.layers[i].attn)[0]) for i, v in heads.items()}
    mlp_channels = {i: _check_indices("mlp_channels", i, v, model.layers[i].mlp.up_proj.out_features)
                    for i, v in mlp_channels.items()}
    head_plans = {i: _kept_heads(model.layers[i].attn, i, removed) for i, removed in heads.items() if removed}
    check_number("percdamp", percdamp, low=0)
    check_int("batch_size", batch_size)
    check_choice("progress", progress, (False, True))
    if calib_tokens is not None:
        check_calib_tokens(model, calib_tokens)
    before, refit = model.num_parameters(), {}
    if calib_tokens is None:
        for i in range(n_layer):
            _prune_layer(model.layers[i], head_plans.get(i), mlp_channels.get(i))
    else:
        refit = _prune_and_refit(model, calib_tokens, head_plans, mlp_channels, percdamp, batch_size, progress)
    after = model.num_parameters()
    layers = [dict(zip(("n_head", "n_kv_head"), _sizes(b.attn)[:2]), d_ff=b.mlp.up_proj.out_features)
              for b in model.layers]
    return {"params_before": before, "params_after": after, "params_removed": before - after, "layers": layers,
            "refit": refit}


@torch.no_grad()
def _contribution_norms(model: nn.Module, calib_tokens: torch.Tensor, batch_size: int = 8,
                        progress: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, ‖Y_h W_o,hᵀ‖₂ for each head h and ‖a_c w_down,cᵀ‖₂ for each channel c, float64.

    Y_h (N, D): head h's attention output over all N calibration tokens; W_o,h (C, D): its
    columns of W_o. a_c (N,): the SwiGLU activation of channel c; w_down,c (C,): column c of
    W_down. The head norm² is tr(W_o,h G_h W_o,hᵀ) with G_h = Y_hᵀ Y_h; the channel norm is
    ‖a_c‖₂·‖w_down,c‖₂ (a rank-one product).
    """
    check_calib_tokens(check_gpt("model", model), calib_tokens)
    check_int("batch_size", batch_size)
    head_gram: list = [None] * len(model.layers)
    chan_sq: list = [None] * len(model.layers)

    def head_hook(i: int, H: int, D: int):
        def hook(module, inputs):
            y = inputs[0].reshape(-1, H, D).double()                  # (N, H, D)
            g = torch.einsum("nhd,nhe->hde", y, y)
            head_gram[i] = g if head_gram[i] is None else head_gram[i] + g
        return hook

    def chan_hook(i: int):
        def hook(module, inputs):
            sq = inputs[0].reshape(-1, inputs[0].shape[-1]).double().pow(2).sum(0)
            chan_sq[i] = sq if chan_sq[i] is None else chan_sq[i] + sq
        return hook

    handles = []
    for i, block in enumerate(model.layers):
        H, _, D = _sizes(block.attn)
        handles.append(block.attn.o_proj.register_forward_pre_hook(head_hook(i, H, D)))
        handles.append(block.mlp.down_proj.register_forward_pre_hook(chan_hook(i)))
    device = next(model.parameters()).device
    try:
        for s in tqdm(range(0, len(calib_tokens), batch_size), desc="importance", disable=not progress):
            model(calib_tokens[s:s + batch_size].to(device))
    finally:
        for handle in handles:
            handle.remove()
    head_scores, chan_scores = [], []
    for i, block in enumerate(model.layers):
        H, _, D = _sizes(block.attn)
        w_o = block.attn.o_proj.weight.double().view(-1, H, D)         # (C, H, D)
        head_scores.append(torch.einsum("chd,hde,che->h", w_o, head_gram[i], w_o).clamp_min(0).sqrt())
        chan_scores.append(chan_sq[i].sqrt() * block.mlp.down_proj.weight.double().norm(dim=0))
    return head_scores, chan_scores


def head_importance(model: nn.Module, calib_tokens: torch.Tensor, batch_size: int = 8,
                    progress: bool = False) -> list[torch.Tensor]:
    """Per layer, (H,) float64: L2 norm of each query head's contribution Y_h W_o,hᵀ on calibration data."""
    return _contribution_norms(model, calib_tokens, batch_size, progress)[0]


def channel_importance(model: nn.Module, calib_tokens: torch.Tensor, batch_size: int = 8,
                       progress: bool = False) -> list[torch.Tensor]:
    """Per layer, (F,) float64: L2 norm of each MLP channel's contribution a_c w_down,cᵀ on calibration data."""
    return _contribution_norms(model, calib_tokens, batch_size, progress)[1]


def prune_structured_by_importance(model: nn.Module, calib_tokens: torch.Tensor, head_fraction: float,
                                   channel_fraction: float, batch_size: int = 8, progress: bool = False,
                                   refit: bool = False, percdamp: float = 0.01) -> dict:
    """Remove, in every layer, the least important ⌊head_fraction·H_kv⌋ kv groups and ⌊channel_fraction·F⌋ channels.

    A kv group (a kv head and its g query heads) scores sqrt(Σ_h∈group ‖Y_h W_o,hᵀ‖²); channels score
    as in `channel_importance` (both on the unpruned model). Both fractions lie in [0, 1), so every layer
    keeps at least one group and one channel. ``refit``: refit W_o and W_down on ``calib_tokens`` by least
    squares (`structured_prune` with calib_tokens, damping ``percdamp``); the units removed are the same.
    Returns `structured_prune`'s report plus the removed "heads" and "mlp_channels".
    """
    for name, value in (("head_fraction", head_fraction), ("channel_fraction", channel_fraction)):
        check_fraction(name, value, closed=(True, False))
    check_choice("refit", refit, (False, True))
    check_number("percdamp", percdamp, low=0)
    head_scores, chan_scores = _contribution_norms(model, calib_tokens, batch_size, progress)
    heads, channels = {}, {}
    for i, block in enumerate(model.layers):
        H, H_kv, _ = _sizes(block.attn)
        group_scores = head_scores[i].pow(2).view(H_kv, H // H_kv).sum(1)
        groups = group_scores.argsort()[: int(head_fraction * H_kv)]
        heads[i] = sorted(h for j in groups.tolist() for h in range(j * (H // H_kv), (j + 1) * (H // H_kv)))
        channels[i] = sorted(chan_scores[i].argsort()[: int(channel_fraction * len(chan_scores[i]))].tolist())
    report = structured_prune(model, heads=heads, mlp_channels=channels,
                              calib_tokens=calib_tokens if refit else None, percdamp=percdamp,
                              batch_size=batch_size, progress=progress)
    return {**report, "heads": heads, "mlp_channels": channels}


def forward_flops(model: nn.Module, seq_len: int) -> int:
    """FLOPs of the matrix products of one forward of a lab `GPT` on one sequence of T = ``seq_len`` tokens,
    read from the shapes of its (possibly structurally pruned) weights:

        F = Σ_layers [2T·(|W_q| + |W_k| + |W_v| + |W_o| + |W_gate| + |W_up| + |W_down|) + 4T²·H·D] + 2T·C·V

    |W| is the number of entries of a weight (each takes one multiply and one add per token); H·D, the
    rows of the layer's W_q, gives the two attention products q kᵀ and softmax(·) v over the full T×T
    scores (as dense attention computes them, the causal mask applied after); 2T·C·V is the output head
    (C = d_model, V = vocabulary), which structured pruning leaves whole. Elementwise work (norms, RoPE,
    SiLU, softmax) and the embedding lookup are left out: O(T·C) against O(T·C²). If time were
    proportional to F, removing units could speed the forward up by F_dense / F_pruned at most.
    """
    check_gpt("model", model)
    check_int("seq_len", seq_len, 1)
    flops = 2 * seq_len * model.lm_head.weight.numel()
    for block in model.layers:
        linears = (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj, block.attn.o_proj,
                   block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj)
        flops += 2 * seq_len * sum(lin.weight.numel() for lin in linears)
        flops += 4 * seq_len ** 2 * block.attn.q_proj.out_features
    return flops


def speedup_against_bound(speedup: dict, bound: float) -> str:
    """The verb a measured speed-up allows against its FLOP bound F_dense / F_pruned (`forward_flops`).

    ``speedup``: a `lab.core.stats.paired_ratio` result (dense ms over pruned ms, with "ci_low" and
    "ci_high" of its 95% interval); ``bound`` > 0. The interval of log(speed-up / bound) is judged by
    `lab.core.stats.verdict`, a family of one: "higher" (the pruned model ran faster than its FLOPs
    allow: a higher FLOP rate than the dense model's, e.g. from caches, or a load that fell on the dense
    model's calls), "lower" (slower than its FLOPs allow: costs that do not shrink with the matrices),
    "equivalent" (within ±1% of the bound) or "inconclusive" (the interval holds the bound).
    """
    bound = check_number("bound", bound, 0.0, closed=(False, True))
    if not isinstance(speedup, dict):
        raise TypeError(f"speedup must be a lab.core.stats.paired_ratio result (a dict), got {speedup!r:.200}")
    low, high = (check_number(f"speedup[{k!r}]", speedup.get(k), 0.0, closed=(False, True))
                 for k in ("ci_low", "ci_high"))
    if low > high:
        raise ValueError(f"speedup must be a lab.core.stats.paired_ratio result, got {speedup!r:.200}")
    return verdict({"ci_low": math.log(low / bound), "ci_high": math.log(high / bound)})
