"""Quantized linear layers that run on the integer kernels, and swapping them into a model.

`Int4Linear` — weight-only int4: W (N, K) stored packed (K/2 bytes per output row, plus a scale and
a zero point per group of g columns, `lab.formats.int4`); y = x Ŵᵀ by
`lab.kernels.int4.int4_weight_only_matmul` (Triton on a GPU, PyTorch on the CPU).

`W8A8Linear` — weights and activations in int8: W quantized symmetrically per output channel
(s_n = max_k |W_nk| / 127), the activation x quantized symmetrically at run time, either per token
(dynamic: s_m = max_k |x_mk| / qmax for every row m) or per tensor with one static scale from
calibration (`lab.quant.observers`); y = (X_q W_qᵀ) ⊙ (s_x s_wᵀ) by
`lab.kernels.int8.int8_matmul`. ``act_bits`` < 8 narrows the activation grid (same kernel).
With SmoothQuant factors ``smooth`` = s (C_in,), the layer quantizes x·diag(s)⁻¹ and W·diag(s)
instead (`lab.quant.scaling`): in a pre-norm model such as the lab `GPT` the division is folded into
the norm (`lab.quant.scaling.smoothquant`) and ``smooth`` stays None; in a post-norm model (BERT)
the norm's output also feeds the residual, so the division is applied here, at the input.

Models are addressed by the dotted names of their linears ("layers.0.attn.q_proj" in a lab `GPT`,
"encoder.layer.0.attention.self.query" in a BERT); `decoder_linear_names` lists a lab `GPT`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from lab.core.checks import check_choice, check_float_dtype
from lab.formats.int4 import dequantize_int4
from lab.kernels.int4 import int4_weight_only_matmul
from lab.kernels.int8 import int8_matmul
from lab.layerwise import LINEARS
from lab.models.gpt import GPT, GPTConfig
from lab.prune.semi_structured import Sparse24Linear
from lab.quant.affine import QuantizedTensor, check_bits, grid, qparams, quantize_with, rtn_quantize
from lab.quant.observers import MinMaxObserver
from lab.quant.packing import pack_quantized_weight

ACT_MODES = ("token", "tensor")


class Int4Linear(nn.Module):
    """y = x Ŵᵀ (+ b) with Ŵ held as packed int4 codes, scales and zeros (bias kept in float)."""

    def __init__(self, qtensor: QuantizedTensor, bias: torch.Tensor | None = None,
                 scale_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        check_float_dtype("scale_dtype", scale_dtype)               # an integer dtype would truncate the scales
        packed, scales, zeros, group_size = pack_quantized_weight(qtensor)
        self.out_features, self.in_features = qtensor.shape
        self.group_size = group_size
        self.register_buffer("packed", packed)
        self.register_buffer("scales", scales.to(scale_dtype))
        self.register_buffer("zeros", zeros.to(scale_dtype))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = int4_weight_only_matmul(x.reshape(-1, self.in_features), self.packed, self.scales, self.zeros,
                                    self.group_size).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)


def quantize_rows_symmetric(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric quantization of x (M, K): (codes int8 (M, K), scales float32 (M,)), s_m = max|x_m|/qmax."""
    qmin, qmax = grid(bits, symmetric=True)
    abs_max = x.detach().abs().amax(1).float()
    scale, _ = qparams(-abs_max, abs_max, bits, True)
    return quantize_with(x, scale[:, None], 0, qmin, qmax).to(torch.int8), scale


class W8A8Linear(nn.Module):
    """int8 weight (per output channel) × int8 activation (per token, or per tensor with a static scale)."""

    def __init__(self, linear: nn.Linear, act: str = "token", act_scale: torch.Tensor | None = None,
                 act_bits: int = 8, smooth: torch.Tensor | None = None) -> None:
        super().__init__()
        check_choice("act", act, ACT_MODES)
        check_bits(act_bits)
        if (act == "tensor") != (act_scale is not None):
            raise ValueError("act='tensor' needs a static act_scale (from an observer); act='token' takes none")
        if smooth is not None and (smooth.shape != (linear.in_features,) or not (smooth > 0).all()):
            raise ValueError(f"smooth must hold {linear.in_features} positive factors, got shape {tuple(smooth.shape)}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.act, self.act_bits = act, act_bits
        weight = linear.weight.detach().float()
        w_q, w_scale = quantize_rows_symmetric(weight if smooth is None else weight * smooth[None, :], 8)
        self.register_buffer("w_q", w_q)
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("act_scale", None if act_scale is None else torch.as_tensor(act_scale, dtype=torch.float32))
        self.register_buffer("smooth", None if smooth is None else smooth.float())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        if self.smooth is not None:
            x2 = x2 / self.smooth.to(x2.dtype)
        if self.act == "token":
            x_q, x_scale = quantize_rows_symmetric(x2, self.act_bits)
        else:
            qmin, qmax = grid(self.act_bits, symmetric=True)
            x_q = quantize_with(x2, self.act_scale, 0, qmin, qmax).to(torch.int8)
            x_scale = self.act_scale.expand(x2.shape[0]).contiguous()
        y = int8_matmul(x_q, self.w_q, x_scale, self.w_scale, x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)



class Sparse24Int4Linear(Sparse24Linear):
    """A `Sparse24Linear` whose kept values are themselves int4: round-to-nearest, asymmetric, one scale and
    zero point in ``dtype`` per ``group_size`` kept values (per 2·``group_size`` input columns), packed as in
    `lab.formats.int4` and dequantized to ``dtype`` at each call; a kept value stays nonzero unless it rounds
    to the zero point."""

    def __init__(self, linear: nn.Linear, group_size: int = 32, dtype: torch.dtype = torch.bfloat16) -> None:
        self.group_size = group_size
        super().__init__(linear, dtype)

    def store_values(self, values: torch.Tensor, dtype: torch.dtype) -> None:
        packed, scales, zeros, _ = pack_quantized_weight(rtn_quantize(values, 4, self.group_size))
        self.register_buffer("packed", packed)
        self.register_buffer("scales", scales.to(dtype))
        self.register_buffer("zeros", zeros.to(dtype))

    def kept_values(self) -> torch.Tensor:
        """s·(q − z) (out, in/2) from the int4 codes, in the scales' dtype."""
        return dequantize_int4(self.packed, self.scales, self.zeros, self.group_size).to(self.scales.dtype)

def decoder_linear_names(model: nn.Module) -> list[str]:
    """The decoder linears of a lab `GPT`: "layers.{i}.{name}" for name in `lab.layerwise.LINEARS`."""
    return [f"layers.{i}.{name}" for i in range(len(model.layers)) for name in LINEARS]


def decoder_linear_shapes(config: GPTConfig) -> tuple[tuple[int, int], ...]:
    """The distinct (out_features, in_features) of a lab GPT's decoder linears (one layer built on ``meta``)."""
    with torch.device("meta"):
        model = GPT(dataclasses.replace(config, n_layer=1))
    return tuple(sorted({(lin.out_features, lin.in_features)
                         for lin in (model.get_submodule(name) for name in decoder_linear_names(model))}))


def _check_names(model: nn.Module, names: list[str]) -> None:
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"model has no submodule {name!r}") from None
        if not isinstance(module, nn.Linear):
            raise ValueError(f"{name!r} is a {type(module).__name__}, not an nn.Linear")


def replace_linears(model: nn.Module, names: list[str], make: Callable[[str, nn.Linear], nn.Module]) -> None:
    """Replace each linear ``names[i]`` of the model by ``make(name, linear)``, in place."""
    _check_names(model, names)
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, make(name, getattr(parent, attr)))


@torch.no_grad()
def observe_linear_inputs(model: nn.Module, names: list[str], forward: Callable[[], object],
                          make_observer: Callable[[], object] = MinMaxObserver,
                          smooth: dict[str, torch.Tensor] | None = None) -> dict[str, object]:
    """One observer per linear in ``names``, updated with that linear's input (divided by ``smooth[name]``
    when given) while ``forward()`` runs the calibration data through the model."""
    _check_names(model, names)
    smooth = smooth or {}
    observers, handles = {}, []
    for name in names:
        observer = observers[name] = make_observer()
        s = smooth.get(name)

        def hook(module, inputs, output, observer=observer, s=s):
            observer.update(inputs[0] if s is None else inputs[0] / s.to(inputs[0]))

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        forward()
    finally:
        for handle in handles:
            handle.remove()
    return observers


@torch.no_grad()
def w8a8_quantize_model(model: nn.Module, act: str = "token", act_bits: int = 8,
                        calib_forward: Callable[[], object] | None = None, names: list[str] | None = None,
                        make_observer: Callable[[], object] = MinMaxObserver,
                        smooth: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Swap linears for `W8A8Linear`s in place (default: a lab `GPT`'s decoder linears); returns the model.

    ``act="token"``: dynamic per-token activation scales; ``act="tensor"``: one static symmetric scale
    per linear from an observer (``make_observer()``, default min–max) updated while
    ``calib_forward()`` runs calibration data through the unquantized model. ``smooth``: optional
    SmoothQuant factors per linear name (for models where they cannot be folded).
    """
    check_choice("act", act, ACT_MODES)
    check_bits(act_bits)
    names = decoder_linear_names(model) if names is None else list(names)
    smooth = smooth or {}
    scales = {}
    if act == "tensor":
        if calib_forward is None:
            raise ValueError("act='tensor' needs calib_forward, a callable running the calibration data")
        for name, observer in observe_linear_inputs(model, names, calib_forward, make_observer, smooth).items():
            scales[name] = observer.qparams(act_bits, symmetric=True)[0]
    replace_linears(model, names, lambda name, lin: W8A8Linear(lin, act, scales.get(name), act_bits, smooth.get(name)))
    return model


def int4_model(model: nn.Module, report: dict[str, dict], scale_dtype: torch.dtype = torch.float32) -> nn.Module:
    """Swap every decoder linear of a lab `GPT` for an `Int4Linear` built from the QuantizedTensors of a
    `lab.quant.model.quantize_model` report (4-bit, asymmetric), in place; returns the model."""
    names = decoder_linear_names(model)
    missing = [name for name in names if name not in report]
    if missing:
        raise ValueError(f"report has no quantized weight for {missing[:3]}; run quantize_model(model, …, bits=4) first")
    replace_linears(model, names, lambda name, lin: Int4Linear(report[name]["qtensor"], lin.bias, scale_dtype))
    return model
