"""Quantized linear layers that run on the integer kernels, and swapping them into a model.

`Int4Linear` — weight-only int4: W (N, K) stored packed (K/2 bytes per output row, plus a scale and
a zero point per group of g columns, `lab.formats.int4`), in v2's layout when g is one of
`V2_GROUP_SIZES` (else v1's); y = x Ŵᵀ by `int4_matmul`, whose path `int4_path` picks from M, the layout and
the device:

    CPU tensor (no TRITON_INTERPRET)  the PyTorch reference: Ŵ dequantized in fp32, x Ŵᵀ (any M, either layout)
    v1 layout                         the v1 kernel (`lab.kernels.int4.int4_weight_only_matmul`), any M
    v2 layout, M ≤ 16                 the v2 decode GEMV (`lab.kernels.int4.int4_gemv_v2`)
    v2 layout, 16 < M ≤ 128           the v2 GEMV on chunks of 16 rows (the weight read once per chunk)
    v2 layout, M > 128                Ŵ dequantized once into x's dtype (`lab.kernels.int4_dequant`), then a
                                      dense matmul (tensor cores)

Where the chunks stop (`CHUNKED_MAX_M`) is a byte count: c chunks read the weight's (1/4 + 2/g)·2NK bytes
(16-bit x, scales and zeros, as the GPU runs store them) c times; dequantizing reads them once and writes then
reads a dense Ŵ, 2·2NK bytes more, so chunks move fewer bytes while c·(1/4 + 2/g) < 1/4 + 2/g + 2, i.e. c ≤ 8
for g = 64 and 128 (the test checks it with the kernels' own ``call_bytes``). With fp32 scales and zeros (the
layer's default) and g = 64 the break-even is 7 chunks: the 8th moves about 8% more bytes than dequantizing.
For M above it the product is compute-bound and the dense path runs the tensor cores at their full rate
(vLLM's AWQ layer makes the same switch, at 256 tokens).

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

from lab.core.checks import check_choice, check_float_dtype, check_float_tensor, check_int, check_number, check_tensor
from lab.core.runtime import runs_triton
from lab.formats.int4 import dequantize_int4
from lab.kernels.int4 import MAX_M, X_DTYPES, int4_gemv_v2, int4_gemv_v2_torch, int4_weight_only_matmul
from lab.kernels.int4_dequant import dequantize_int4_v2
from lab.kernels.int8 import OUT_DTYPES, int8_matmul
from lab.layerwise import LINEARS
from lab.models.gpt import GPT, GPTConfig, check_gpt
from lab.prune.semi_structured import Sparse24Linear
from lab.quant.affine import QuantizedTensor, _quantize_with, check_bits, grid, range_qparams, rtn_quantize
from lab.quant.observers import MinMaxObserver
from lab.quant.packing import pack_quantized_weight

ACT_MODES = ("token", "tensor")
V2_GROUP_SIZES = (64, 128)        # g stored in v2's layout (the sm_90 compile checks the v2 kernel at both)
CHUNKED_MAX_M = 8 * MAX_M         # v2 on chunks of 16 rows up to this M (module docstring)


def _check_input(x: torch.Tensor, in_features: int, dtypes: tuple[torch.dtype, ...]) -> None:
    """x (…, in_features) of a float dtype the kernel reads (shape and dtype only: no read-back)."""
    check_tensor("x", x, dtypes=dtypes)
    if x.dim() == 0 or x.shape[-1] != in_features:
        raise ValueError(f"x must have shape (..., in_features={in_features}), got {tuple(x.shape)}")


def int4_path(M: int, layout: str, device: torch.device) -> str:
    """The path an `Int4Linear` product of M rows takes (module docstring's table): "torch", "v1", "v2",
    "v2 chunks" or "dequantize + dense"."""
    check_int("M", M)
    check_choice("layout", layout, ("v1", "v2"))
    if not runs_triton(device):
        return "torch"
    if layout == "v1":
        return "v1"
    return "v2" if M <= MAX_M else "v2 chunks" if M <= CHUNKED_MAX_M else "dequantize + dense"


def int4_matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                group_size: int) -> torch.Tensor:
    """y (M, N) = x Ŵᵀ for x (M, K) and Ŵ packed in v1's (uint8) or v2's (int16) layout, by `int4_path`."""
    layout = "v2" if check_tensor("packed", packed).dtype == torch.int16 else "v1"
    x = check_tensor("x", x, 2).contiguous()
    if x.shape[0] == 0:                                                     # no rows: no kernel
        return x.new_empty(0, packed.shape[0] if layout == "v2" else packed.shape[1])
    path = int4_path(x.shape[0], layout, x.device)
    if path == "torch" and layout == "v2":
        return int4_gemv_v2_torch(x, packed, scales, zeros, group_size)
    if path in ("torch", "v1"):
        return int4_weight_only_matmul(x, packed, scales, zeros, group_size)
    if path == "v2":
        return int4_gemv_v2(x, packed, scales, zeros, group_size)
    if path == "v2 chunks":
        return torch.cat([int4_gemv_v2(rows, packed, scales, zeros, group_size) for rows in x.split(MAX_M)])
    return x @ dequantize_int4_v2(packed, scales, zeros, group_size, x.dtype).T


class Int4Linear(nn.Module):
    """y = x Ŵᵀ (+ b) with Ŵ held as packed int4 codes (``layout`` "v2" when g is in `V2_GROUP_SIZES`, else
    "v1"), scales and zeros (bias kept in float)."""

    def __init__(self, qtensor: QuantizedTensor, bias: torch.Tensor | None = None,
                 scale_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        check_float_dtype("scale_dtype", scale_dtype)               # an integer dtype would truncate the scales
        g = (qtensor.group_size or qtensor.shape[-1]) if isinstance(qtensor, QuantizedTensor) else None
        self.layout = "v2" if g in V2_GROUP_SIZES else "v1"
        packed, scales, zeros, group_size = pack_quantized_weight(qtensor, "qtensor", self.layout)
        self.out_features, self.in_features = qtensor.shape
        if bias is not None and check_float_tensor("bias", bias, 1).shape != (self.out_features,):
            raise ValueError(f"bias must have shape (out_features,) = ({self.out_features},), got {tuple(bias.shape)}")
        self.group_size = group_size
        self.register_buffer("packed", packed)
        self.register_buffer("scales", scales.to(scale_dtype))
        self.register_buffer("zeros", zeros.to(scale_dtype))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_features, X_DTYPES)
        x2 = x.reshape(-1, self.in_features).contiguous()     # a strided x: the rows' values, summed in one order
        y = int4_matmul(x2, self.packed, self.scales, self.zeros, self.group_size)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)


def quantize_rows_symmetric(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric quantization of x (M, K): (codes int8 (M, K), scales float32 (M,)), s_m = max|x_m|/qmax."""
    qmin, qmax = grid(bits, symmetric=True)
    abs_max = x.detach().abs().amax(1).float()
    scale, _ = range_qparams(-abs_max, abs_max, bits, True)
    return _quantize_with(x, scale[:, None], 0, qmin, qmax).to(torch.int8), scale


class W8A8Linear(nn.Module):
    """int8 weight (per output channel) × int8 activation (per token, or per tensor with a static scale)."""

    def __init__(self, linear: nn.Linear, act: str = "token", act_scale: torch.Tensor | None = None,
                 act_bits: int = 8, smooth: torch.Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        check_choice("act", act, ACT_MODES)
        check_bits(act_bits, "act_bits")
        if (act == "tensor") != (act_scale is not None):
            raise ValueError("act='tensor' needs a static act_scale (from an observer); act='token' takes none")
        if act_scale is not None:  # one positive scale: a number or a one-element tensor
            check_number("act_scale", act_scale.item() if torch.is_tensor(act_scale) and act_scale.numel() == 1
                         else act_scale, low=0, closed=(False, True))
        if smooth is not None and (check_float_tensor("smooth", smooth).shape != (linear.in_features,)
                                   or not (smooth > 0).all()):
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
        _check_input(x, self.in_features, OUT_DTYPES)
        x2 = x.reshape(-1, self.in_features)
        if self.smooth is not None:
            x2 = x2 / self.smooth.to(x2.dtype)
        if self.act == "token":
            x_q, x_scale = quantize_rows_symmetric(x2, self.act_bits)
        else:
            qmin, qmax = grid(self.act_bits, symmetric=True)
            x_q = _quantize_with(x2, self.act_scale, 0, qmin, qmax).to(torch.int8)
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
    check_gpt("model", model)
    return [f"layers.{i}.{name}" for i in range(len(model.layers)) for name in LINEARS]


def decoder_linear_shapes(config: GPTConfig) -> tuple[tuple[int, int], ...]:
    """The distinct (out_features, in_features) of a lab GPT's decoder linears (one layer built on ``meta``)."""
    with torch.device("meta"):
        model = GPT(dataclasses.replace(config, n_layer=1))
    return tuple(sorted({(lin.out_features, lin.in_features)
                         for lin in (model.get_submodule(name) for name in decoder_linear_names(model))}))


def check_linear_names(model: nn.Module, names: list[str]) -> None:
    """``names`` is a list (not a str) of dotted names of nn.Linear submodules of ``model``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
        raise TypeError(f"names must be a list of the linears' dotted names, got {names!r}")
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"model has no submodule {name!r}") from None
        if not isinstance(module, nn.Linear):
            raise ValueError(f"{name!r} is a {type(module).__name__}, not an nn.Linear")


def replace_linears(model: nn.Module, names: list[str], make: Callable[[str, nn.Linear], nn.Module]) -> None:
    """Replace each linear ``names[i]`` of the model by ``make(name, linear)``, in place."""
    check_linear_names(model, names)
    for name in names:
        model.set_submodule(name, make(name, model.get_submodule(name)))


@torch.no_grad()
def observe_linear_inputs(model: nn.Module, names: list[str], forward: Callable[[], object],
                          make_observer: Callable[[], object] = MinMaxObserver,
                          smooth: dict[str, torch.Tensor] | None = None) -> dict[str, object]:
    """One observer per linear in ``names``, updated with that linear's input (divided by ``smooth[name]``
    when given) while ``forward()`` runs the calibration data through the model."""
    check_linear_names(model, names)
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
    check_bits(act_bits, "act_bits")
    names = decoder_linear_names(model) if names is None else names
    check_linear_names(model, names)
    smooth = {} if smooth is None else smooth
    if not isinstance(smooth, dict):
        raise TypeError(f"smooth must be a dict {{linear name: factors}}, got {type(smooth).__name__}")
    if set(smooth) - set(names):
        raise ValueError(f"smooth has factors for {sorted(set(smooth) - set(names))[:3]}, not among the linears to "
                         "quantize (names)")
    if not callable(make_observer) or not (calib_forward is None or callable(calib_forward)):
        raise TypeError(f"calib_forward (or None) and make_observer must be callables, got calib_forward="
                        f"{calib_forward!r}, make_observer={make_observer!r}")
    scales = {}
    if act == "tensor":
        if calib_forward is None:
            raise ValueError("act='tensor' needs calib_forward, a callable running the calibration data")
        for name, observer in observe_linear_inputs(model, names, calib_forward, make_observer, smooth).items():
            scales[name] = observer.qparams(act_bits, symmetric=True)[0]
    layers = {name: W8A8Linear(model.get_submodule(name), act, scales.get(name), act_bits, smooth.get(name))
              for name in names}                                                # all built before any is swapped in
    replace_linears(model, names, lambda name, lin: layers[name])
    return model


def int4_model(model: nn.Module, report: dict[str, dict], scale_dtype: torch.dtype = torch.float32) -> nn.Module:
    """Swap every decoder linear of a lab `GPT` for an `Int4Linear` built from the QuantizedTensors of a
    `lab.quant.model.quantize_model` report (4-bit, asymmetric), in place; returns the model."""
    names = decoder_linear_names(model)
    check_float_dtype("scale_dtype", scale_dtype)
    if not isinstance(report, dict):
        raise TypeError(f"report must be the dict quantize_model returns, got {type(report).__name__}")
    missing = [name for name in names if not isinstance(report.get(name), dict) or "qtensor" not in report[name]]
    if missing:
        raise ValueError(f"report has no quantized weight for {missing[:3]}; run quantize_model(model, …, bits=4) first")
    layers = {name: Int4Linear(report[name]["qtensor"], model.get_submodule(name).bias, scale_dtype)
              for name in names}                                                # all built before any is swapped in
    replace_linears(model, names, lambda name, lin: layers[name])
    return model
