"""Weight quantization of a whole lab `GPT`: round-to-nearest, GPTQ and AWQ, layer by layer.

Every linear of every decoder layer (q/k/v/o, gate/up/down) gets a b-bit grid per output channel
(``group_size=None``) or per group of g input columns; embeddings, norms and ``lm_head`` stay in
full precision, as in the papers' tables. The model keeps float weights equal to the dequantized
values Ŵ = s·(q − z) ("simulated" or fake quantization: the accuracy is that of the integer model;
the integers themselves are returned for packing and for the kernels).

    rtn   — Ŵ = dequantize(quantize(W)): round every weight to the nearest grid point.
    gptq  — `lab.quant.gptq.gptq_quantize` with H = (2/N)·G from the layer's calibration inputs; the
            linears that read one input (q/k/v, gate/up) share H and are swept together (`_gptq_layer`).
    awq   — per `lab.quant.scaling.SCALE_GROUPS`, search s by `awq_scale_search`, fold it into the
            producer and the linears, then round to nearest.

Calibration (gptq, awq) is sequential (`lab.layerwise.for_each_layer`): layer i+1 sees the outputs
of the already quantized layer i.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lab.core.checks import check_choice, check_divisor, check_int, check_number
from lab.layerwise import INPUT_GROUPS, LINEARS, InputStats, check_calib_tokens, for_each_layer, relative_output_error
from lab.models.gpt import check_gpt
from lab.quant.affine import QuantizedTensor, check_bits, dequantize, rtn_quantize, split_rows
from lab.quant.gptq import gptq_quantize
from lab.quant.scaling import SCALE_GROUPS, awq_scale_search, fold_scales

METHODS = ("rtn", "gptq", "awq")


def _check_args(model: nn.Module, method: str, bits: int, group_size: int | None,
                calib_tokens: torch.Tensor | None) -> None:
    check_gpt("model", model)
    check_choice("method", method, METHODS)
    check_bits(bits)
    if group_size is not None:  # it must divide every input width, i.e. their gcd
        widths = sorted({model.layers[0].get_submodule(n).in_features for n in LINEARS})
        check_divisor("group_size", group_size, math.gcd(*widths), f"gcd({', '.join(map(str, widths))})")
    if method == "rtn":
        if calib_tokens is not None:
            check_calib_tokens(model, calib_tokens)
        return
    if calib_tokens is None:
        raise ValueError(f"method={method!r} needs calib_tokens, got None")
    check_calib_tokens(model, calib_tokens)


def _gptq_layer(block: nn.Module, stats: dict[str, InputStats], bits: int, group_size: int | None,
                actorder: bool, percdamp: float, blocksize: int, symmetric: bool) -> dict[str, QuantizedTensor]:
    """GPTQ of one decoder layer's linears, {name: QuantizedTensor}. The linears that read one input
    (`lab.layerwise.INPUT_GROUPS`) share H = (2/N)·G, and GPTQ rounds every row of W on its own with the
    same Cholesky rows, so their weights are stacked, (Σ rows, C_in), and swept once: the result of one
    sweep per linear in fewer column steps (`gptq_quantize` for the other arguments)."""
    qtensors = {}
    for group in INPUT_GROUPS:
        weights = [block.get_submodule(name).weight for name in group]
        hessian = 2.0 / stats[group[0]].n_tokens * stats[group[0]].gram
        stacked = gptq_quantize(torch.cat(weights), hessian, bits, group_size, actorder, percdamp, blocksize,
                                symmetric)
        qtensors.update(zip(group, split_rows(stacked, [w.shape[0] for w in weights])))
    return qtensors


@torch.no_grad()
def quantize_model(model: nn.Module, method: str, bits: int, group_size: int | None = None,
                   calib_tokens: torch.Tensor | None = None, *, symmetric: bool = False, actorder: bool = False,
                   percdamp: float = 0.01, blocksize: int = 128, awq_grid: int = 20, progress: bool = True,
                   batch_size: int = 8) -> dict[str, dict]:
    """Quantize the decoder linears of a lab `GPT` in place (weights become Ŵ); see the module docstring.

    ``calib_tokens``: (n_samples, seq_len) int64 ids, needed by gptq and awq (optional for rtn: then
    only the reported errors use it). Returns ``{"layers.i.attn.q_proj": {"qtensor": QuantizedTensor,
    "error": ‖WX − ŴX‖² / ‖WX‖² on the calibration inputs or None, "awq_alpha": α (awq only)}}``.
    For awq, W means the weight before its scales were folded in, and Ŵ the folded quantized weight
    mapped back (Q(W diag s) diag s⁻¹).
    """
    _check_args(model, method, bits, group_size, calib_tokens)
    for name, value in dict(symmetric=symmetric, actorder=actorder, progress=progress).items():
        check_choice(name, value, (False, True))
    check_number("percdamp", percdamp, low=0)
    for name, value in dict(blocksize=blocksize, awq_grid=awq_grid, batch_size=batch_size).items():
        check_int(name, value)
    report: dict[str, dict] = {}

    def round_weight(w: torch.Tensor) -> torch.Tensor:
        return dequantize(rtn_quantize(w, bits, group_size, symmetric))

    def quantize_layer(i: int, block: nn.Module, stats: dict[str, InputStats]) -> None:
        original = {name: block.get_submodule(name).weight.detach().clone() for name in LINEARS}
        col_scale = {name: None for name in LINEARS}  # s folded into each linear's columns (awq)
        alphas = {}
        if method == "awq":
            for producer, linears in SCALE_GROUPS:
                s, alpha, _ = awq_scale_search([original[n] for n in linears], stats[linears[0]], round_weight,
                                               awq_grid)
                fold_scales(block, producer, linears, s)
                col_scale.update({n: s for n in linears})
                alphas.update({n: alpha for n in linears})
        gptq = _gptq_layer(block, stats, bits, group_size, actorder, percdamp, blocksize, symmetric) \
            if method == "gptq" else {}
        for name in LINEARS:
            weight = block.get_submodule(name).weight
            qt = gptq[name] if method == "gptq" else rtn_quantize(weight, bits, group_size, symmetric)
            weight.copy_(dequantize(qt).to(weight.dtype))
            entry = {"qtensor": qt, "error": None}
            if name in stats:
                w_hat = weight.detach().float()
                # Ŵ of the unscaled weight: awq folded s into this linear's columns and (for up_proj) 1/s into its rows
                if col_scale[name] is not None:
                    w_hat = w_hat / col_scale[name][None, :]
                if method == "awq" and name == "mlp.up_proj":
                    w_hat = w_hat * col_scale["mlp.down_proj"][:, None]
                entry["error"] = relative_output_error(original[name], w_hat, stats[name].gram)
            if name in alphas:
                entry["awq_alpha"] = alphas[name]
            report[f"layers.{i}.{name}"] = entry

    for_each_layer(model, calib_tokens, quantize_layer, progress=progress, batch_size=batch_size,
                   desc=f"quantize ({method}, {bits} bit)")
    return report


def rtn_quantize_model(model: nn.Module, bits: int, group_size: int | None = None,
                       symmetric: bool = False) -> dict[str, dict]:
    """Round-to-nearest of every decoder linear in place: `quantize_model` with method "rtn", no calibration."""
    return quantize_model(model, "rtn", bits, group_size, None, symmetric=symmetric, progress=False)
