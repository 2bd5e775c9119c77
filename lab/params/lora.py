"""LoRA and QLoRA from scratch: train a low-rank update beside a frozen weight.

A linear layer with weight W (d_out, d_in) and bias b becomes (Hu et al. 2021)

    y = W x + b + (α/r) · B A x,        A (r, d_in),  B (d_out, r),  1 ≤ r ≤ min(d_in, d_out)

W and b are frozen; only A and B are trained: r·(d_in + d_out) numbers instead of d_in·d_out.
A starts Kaiming-uniform (``kaiming_uniform_(A, a=√5)``, nn.Linear's and peft's default; the paper draws
A from a Gaussian) and B at 0, so the wrapped layer starts equal to the base one (B A = 0) while
∂L/∂B = (α/r)·(∂L/∂y)(A x)ᵀ ≠ 0.
The factor α/r keeps the size of the update comparable when r changes (α fixed while r is swept).
After training, the update folds into the weight, W' = W + (α/r)·B A (`LoRALinear.merge`), and the
merged model costs nothing extra at inference.

QLoRA (Dettmers et al. 2023) is the same with W a frozen int4 weight: `lab.quant.linear.Int4Linear`,
packed 4-bit codes q with a scale s and a zero point z per output row and group of g input columns,
Ŵ = s·(q − z). Forward runs the int4 matmul (Ŵ dequantized in registers by the Triton kernel on a
GPU, in a temporary on the CPU); backward needs only ∂L/∂x = (∂L/∂y) Ŵ and recomputes Ŵ from the
codes, so neither the module nor the autograd graph keeps a float copy of W. The layer's memory is
the packed codes + scales + zeros + A and B. `add_lora` gives every int4 linear of the model that
backward (`FrozenInt4Linear`), the ones it does not wrap too (the MLP's, with LoRA on attention):
without it the PyTorch path would save its dequantized Ŵ for backward, and the Triton kernel, which
has no backward, would cut the gradient through them. (This int4 QLoRA replaces the paper's NF4 codes and
double-quantized scales by chapter 3's affine int4 grid.)

QLoRA as published (`qlora_model`): every decoder linear (q, k, v, o, gate, up, down) becomes a
`lab.quant.nf4_linear.NF4Linear`, NF4 codes in blocks of 64 with double-quantized absmax (≈ 4.127 bits
per weight, `lab.formats.nf4`) that computes in bf16 and recomputes Ŵ in its own backward, and LoRA
wraps every one of them (``targets="all-linear"``, peft's name for it). The paper keeps A and B in bf16
too; here they stay in float32, as for every base (below).

A and B are float32, whatever the dtype of the base: they are the weights the optimizer updates, and
a bf16 copy would round small updates away. The LoRA term is computed in float32 and cast to x's dtype.
`merge_logit_error` measures how far merging moves a model's output.
Fine-tuning memory with AdamW (`lora_memory`): the frozen tensors as stored, the trainable ones, their
gradients (same bytes) and the optimizer's two float32 states m and v per trainable number.
`lora_training_memory` is the same count in closed form, from a `GPTConfig` alone (a model too large
to build, such as a 70B one).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lab.core.checks import check_choice, check_divisor, check_int, check_number, check_tensor
from lab.formats.int4 import dequantize_int4
from lab.layerwise import LINEARS
from lab.models.gpt import GPTConfig
from lab.params.counting import gpt_param_count, unique_parameters, unique_state_dict
from lab.quant.linear import Int4Linear, decoder_linear_names
from lab.quant.nf4_linear import NF4Linear, nf4_model

BASES = (nn.Linear, Int4Linear, NF4Linear)
ALL_LINEAR = "all-linear"          # add_lora's targets: every decoder linear of a lab GPT (lab.layerwise.LINEARS)


def _int4_weight(base: Int4Linear) -> torch.Tensor:
    """Ŵ = s·(q − z) (d_out, d_in) float32 of an int4 linear (`lab.formats.int4.dequantize_int4`)."""
    return dequantize_int4(base.packed, base.scales, base.zeros, base.group_size)


class _FrozenInt4(torch.autograd.Function):
    """y = Int4Linear(x) = x Ŵᵀ + b; backward ∂L/∂x = (∂L/∂y) Ŵ with Ŵ recomputed (W and b are frozen)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, base: Int4Linear) -> torch.Tensor:
        ctx.base = base
        return Int4Linear.forward(base, x)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        return (grad_y.float() @ _int4_weight(ctx.base)).to(grad_y.dtype), None


class FrozenInt4Linear(Int4Linear):
    """An `Int4Linear` whose forward goes through `_FrozenInt4`: the same y, and a backward that
    recomputes Ŵ from the codes (set by `LoRALinear` and `add_lora`; buffers, names and state_dict
    are the Int4Linear's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _FrozenInt4.apply(x, self)


def _freeze(module: nn.Module) -> nn.Module:
    """requires_grad False on the module's parameters; each `Int4Linear` in it becomes a `FrozenInt4Linear`."""
    for m in module.modules():
        if isinstance(m, Int4Linear):
            m.__class__ = FrozenInt4Linear
    return module.requires_grad_(False)


class LoRALinear(nn.Module):
    """y = W x + b + (α/r)·B A x over a frozen ``base`` (an nn.Linear, or for QLoRA an `Int4Linear` or an
    `NF4Linear`).

    x (..., d_in) → y (..., d_out) in x's dtype; A (r, d_in) and B (d_out, r) are float32 parameters on
    the base's device. Wrapping freezes the base in place (requires_grad False on W and b; an
    Int4Linear becomes a `FrozenInt4Linear`).
    """

    def __init__(self, base: nn.Linear | Int4Linear | NF4Linear, r: int, alpha: float) -> None:
        super().__init__()
        if not isinstance(base, BASES):
            raise TypeError(f"base must be an nn.Linear, a lab.quant.linear.Int4Linear or a lab.quant.NF4Linear, "
                            f"got {type(base).__name__}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r = check_int("r", r, 1, min(self.in_features, self.out_features))
        self.alpha = check_number("alpha", alpha, 0.0, closed=(False, True))
        self.base = _freeze(base)
        device = base.weight.device if isinstance(base, nn.Linear) else base.packed.device
        self.A = nn.Parameter(torch.empty(r, self.in_features, device=device))
        self.B = nn.Parameter(torch.zeros(self.out_features, r, device=device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    @property
    def scaling(self) -> float:
        """α/r."""
        return self.alpha / self.r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not check_tensor("x", x).is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have shape (..., {self.in_features}), got {tuple(x.shape)}")
        y = self.base(x)
        return y + (self.scaling * F.linear(F.linear(x.float(), self.A), self.B)).to(y.dtype)

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A new, frozen nn.Linear with weight W + (α/r)·B A (W = Ŵ for an int4 or NF4 base) and bias b.

        Its dtype is W's (float32 for an int4 or NF4 base); the sum is formed in float32. (An NF4 base computes
        in bf16, the merged layer in float32: they differ by bf16 rounding.)
        """
        if isinstance(self.base, NF4Linear):
            W = self.base.dequantize(torch.float32)
        else:
            W = self.base.weight if isinstance(self.base, nn.Linear) else _int4_weight(self.base)
        bias = self.base.bias
        merged = nn.Linear(self.in_features, self.out_features, bias=bias is not None,
                           device=W.device, dtype=W.dtype)
        merged.weight.copy_(W.float() + self.scaling * (self.B @ self.A))
        if bias is not None:
            merged.bias.copy_(bias)
        return merged.requires_grad_(False)


def add_lora(model: nn.Module, r: int = 8, alpha: float = 16.0,
             targets: Iterable[str] | str = ("q_proj", "v_proj")) -> list[str]:
    """Wrap the linears named by ``targets`` in `LoRALinear`s (in place) and freeze everything else.

    ``targets``: module-name suffixes, as peft's ``target_modules`` list: a module is wrapped when its
    dotted name equals a target or ends with "." + target ("q_proj" matches "layers.0.attn.q_proj";
    "attn.q_proj" also does); ``targets="all-linear"`` is every decoder linear of a lab GPT (q, k, v, o, gate,
    up and down projections, `lab.layerwise.LINEARS`; not the head). Every target must match at least one
    module, each an nn.Linear, an `Int4Linear` or an `NF4Linear`. Afterwards only the A and B of the new
    layers have requires_grad True, and every Int4Linear of the model, wrapped or not, is a `FrozenInt4Linear`.
    Returns the wrapped names in module order; the model is left unchanged when an argument is wrong.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(targets, str) and targets == ALL_LINEAR:
        targets = LINEARS
    if isinstance(targets, str) or not isinstance(targets, Iterable):
        raise TypeError(f"targets must be an iterable of module-name suffixes such as ('q_proj', 'v_proj'), or "
                        f"{ALL_LINEAR!r}, got {targets!r}")
    targets = tuple(targets)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise TypeError(f"targets must hold non-empty strings, got {targets!r}")
    modules = dict(model.named_modules())

    def matches(name: str, target: str) -> bool:
        return name == target or name.endswith("." + target)

    unmatched = [t for t in targets if not any(matches(name, t) for name in modules)]
    if unmatched:
        examples = [name for name, m in modules.items() if isinstance(m, BASES)][:4]
        raise ValueError(f"targets={targets!r}: {unmatched} match no module of the model; "
                         f"allowed: suffixes of linear names such as {examples}")
    names = [name for name in modules if any(matches(name, t) for t in targets)]
    for name in names:
        if not isinstance(modules[name], BASES):
            raise TypeError(f"targets={targets!r} match {name!r}, a {type(modules[name]).__name__}; "
                            "allowed: nn.Linear, Int4Linear or NF4Linear modules only")
    for name in names:   # r against every target before any wrapper freezes its base
        check_int("r", r, 1, min(modules[name].in_features, modules[name].out_features))
    wrapped = [LoRALinear(modules[name], r, alpha) for name in names]
    _freeze(model)
    for name, lora in zip(names, wrapped):
        model.set_submodule(name, lora)
    return names


def qlora_model(model: nn.Module, r: int = 8, alpha: float = 16.0, block_size: int = 64) -> list[str]:
    """QLoRA as published (Dettmers et al. 2023), in place on a lab GPT: every decoder linear becomes an
    `NF4Linear` (NF4 in blocks of ``block_size``, an even divisor of every d_in, with double-quantized absmax;
    bf16 compute; `lab.quant.nf4_linear.nf4_model`) and LoRA of rank ``r`` and scale ``alpha`` wraps every one
    of them (`add_lora` with ``targets="all-linear"``). Returns the wrapped names, in module order; the model
    is left unchanged when an argument is wrong."""
    linears = [model.get_submodule(name) for name in decoder_linear_names(model)]   # checks model
    check_int("r", r, 1, min(min(lin.in_features, lin.out_features) for lin in linears))
    check_number("alpha", alpha, 0.0, closed=(False, True))
    nf4_model(model, block_size)
    return add_lora(model, r, alpha, ALL_LINEAR)


def merge_lora(model: nn.Module) -> list[str]:
    """Replace every `LoRALinear` of ``model`` by its `LoRALinear.merge` (in place); returns their names."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    if not names:
        raise ValueError(f"model ({type(model).__name__}) has no LoRALinear to merge; call add_lora first")
    for name in names:
        model.set_submodule(name, model.get_submodule(name).merge())
    return names


def merge_logit_error(model: nn.Module, idx: torch.Tensor) -> float:
    """max |model(idx) − merged(idx)| with merged a copy of ``model`` after `merge_lora`: how far folding
    (α/r)·B A into W moves the output (float32 rounding only). ``model`` is not changed.
    ``idx``: token ids (B, T), int64 or int32, in [0, vocab_size) when ``model.config`` gives one."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_tensor("idx", idx, 2, (torch.int64, torch.int32))
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab, int) and idx.numel() and not (0 <= int(idx.min()) and int(idx.max()) < vocab):
        raise ValueError(f"idx must hold token ids in [0, vocab_size={vocab}), got values in "
                         f"[{int(idx.min())}, {int(idx.max())}]")
    merged = copy.deepcopy(model)
    merge_lora(merged)
    with torch.no_grad():
        return (model(idx) - merged(idx)).abs().max().item()


def trainable_parameters(model: nn.Module) -> int:
    """Number of unique parameters with requires_grad True (a tied parameter counts once)."""
    return sum(p.numel() for _, p in unique_parameters(model)[0] if p.requires_grad)


def lora_memory(model: nn.Module) -> dict[str, int]:
    """Bytes of fine-tuning ``model`` with AdamW, from the tensors' storage (each storage counted once).

    {"frozen": parameters without grad + buffers (int4 codes, scales, zeros), as stored,
     "trainable": Σ numel·element_size of the parameters with grad,
     "gradients": the same bytes again (one .grad per trainable parameter),
     "optimizer": 2·4·N_train (AdamW's m and v in float32),
     "total": the sum}.
    """
    params, _ = unique_parameters(model)  # also checks that model is an nn.Module
    trainable = [p for _, p in params if p.requires_grad]
    trainable_bytes = sum(p.numel() * p.element_size() for p in trainable)
    stored = sum(t.numel() * t.element_size() for t in unique_state_dict(model).values())
    parts = {"frozen": stored - trainable_bytes, "trainable": trainable_bytes, "gradients": trainable_bytes,
             "optimizer": 2 * 4 * sum(p.numel() for p in trainable)}
    return {**parts, "total": sum(parts.values())}


BASE_FORMATS = ("bf16", "int4")


def decoder_linear_shapes(config: GPTConfig) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of each linear of one decoder layer of a lab GPT, by its module name:
    q_proj (C, n_h·D), k_proj and v_proj (C, n_kv·D), o_proj (n_h·D, C), gate_proj and up_proj (C, d_ff),
    down_proj (d_ff, C)."""
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a lab.models.gpt.GPTConfig, got {type(config).__name__}")
    C, F_, D = config.d_model, config.d_ff, config.head_dim
    q, kv = config.n_head * D, config.n_kv_head * D
    return {"q_proj": (C, q), "k_proj": (C, kv), "v_proj": (C, kv), "o_proj": (q, C),
            "gate_proj": (C, F_), "up_proj": (C, F_), "down_proj": (F_, C)}


def lora_training_memory(config: GPTConfig, r: int, targets: Iterable[str] = ("q_proj", "v_proj"),
                         base: str = "bf16", group_size: int | None = None) -> dict[str, int]:
    """`lora_memory` in closed form: bytes of fine-tuning a lab GPT of ``config`` with AdamW and LoRA of
    rank ``r`` on the linears named ``targets`` (names of `decoder_linear_shapes`) in every layer.

    Ψ_train = L·r·Σ_targets (d_in + d_out) numbers (A and B of every wrapped linear), and
      frozen     base "bf16": 2Ψ, every original parameter in bf16 (the wrapped W included);
                 base "int4" (QLoRA, groups of g = ``group_size`` input columns): each of the L·7 decoder
                 linears d_in·d_out·(1/2 + 4/g) (codes two per byte; a bf16 scale and zero point per
                 output row and group), everything else (embedding, untied head, norms) 2 bytes each;
      trainable  4Ψ_train (A and B in fp32), gradients 4Ψ_train, optimizer 8Ψ_train (fp32 m and v);
      total      the sum: frozen + 16Ψ_train.
    Ψ = `gpt_param_count(config)`. Returns {"frozen", "trainable", "gradients", "optimizer", "total"}
    (ints), the keys of `lora_memory`, which measures the same bytes on a built model.
    ``group_size`` is required for "int4" (even, and a divisor of every d_in) and not allowed for "bf16".
    """
    shapes = decoder_linear_shapes(config)  # also checks config
    if isinstance(targets, str) or not isinstance(targets, Iterable):
        raise TypeError(f"targets must be an iterable of linear names such as ('q_proj', 'v_proj'), got {targets!r}")
    targets = tuple(targets)
    unknown = [t for t in targets if t not in shapes]
    if not targets or unknown:
        raise ValueError(f"targets={targets!r} is not allowed; use one or more of {tuple(shapes)}")
    wrapped = [name for name in shapes if name in targets]
    check_int("r", r, 1, min(min(shapes[name]) for name in wrapped))
    check_choice("base", base, BASE_FORMATS)
    psi, L = gpt_param_count(config), config.n_layer
    if base == "bf16":
        if group_size is not None:
            raise ValueError(f"group_size={group_size!r} is not allowed with base='bf16'; use None")
        frozen = 2 * psi
    else:
        if group_size is None:
            raise ValueError("group_size=None is not allowed with base='int4'; give the int4 group size g")
        check_int("group_size", group_size, 2)
        if group_size % 2:
            raise ValueError(f"group_size={group_size} is not allowed; int4 codes pack two per byte, use an even g")
        for name, (d_in, _) in shapes.items():
            check_divisor("group_size", group_size, d_in, f"d_in of {name}")
        linears = sum(d_in * d_out for d_in, d_out in shapes.values())
        codes_and_scales = sum(d_in * d_out // 2 + 2 * 2 * (d_in // group_size) * d_out
                               for d_in, d_out in shapes.values())
        frozen = L * codes_and_scales + 2 * (psi - L * linears)
    n_train = L * r * sum(sum(shapes[name]) for name in wrapped)
    parts = {"frozen": frozen, "trainable": 4 * n_train, "gradients": 4 * n_train, "optimizer": 8 * n_train}
    return {**parts, "total": sum(parts.values())}
