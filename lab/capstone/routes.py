"""The routes of chapter 7's leaderboard: each a way to make the book's model smaller or faster.

A `Route` builds its model from a context (the dense model, calibration windows, settings) and says
what it needs (calibration data, training) and which matmul it runs on (`MATMUL_RATE`). `VERSUS` names the
pairs of routes the leaderboard also compares directly, besides every route against the first.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from lab.core.checks import check_choice, check_int
from lab.core.runtime import runs_triton
from lab.distill.experiments import lm_batches
from lab.distill.loop import KDLoss, TeacherCache, distill
from lab.distill.students import gpt_student
from lab.formats.fp4 import dequantize_fp4
from lab.kernels.fp4_gemv import FORMATS as FP4_FORMATS
from lab.kernels.fp4_gemv import fp4_matmul
from lab.kernels.int4 import MAX_M
from lab.models.gpt import GPT
from lab.models.loop import Optim
from lab.prune.semi_structured import Sparse24Linear
from lab.prune.sequential import prune_model
from lab.quant.linear import Sparse24Int4Linear, decoder_linear_names, int4_model, replace_linears, w8a8_quantize_model
from lab.quant.model import quantize_model
from lab.quant.mx import MXTensor, fp4_weight, quantize_mx
from lab.quant.scaling import activation_abs_max, smoothquant

MATMUL_RATE = {"bf16": 1.0, "int8": 2.0, "2:4 sparse": 2.0}   # × bf16 dense, H100/H200 datasheets


@dataclass(frozen=True)
class Settings:
    """The run's sizes: evaluation tokens (None: the whole test split), calibration windows, group size g,
    the student's training, the decode timing (prompt length, generated tokens, repeats of the timer),
    and the seeds of every route that depends on one (calibration windows, the student's batches and
    initialisation): its losses at each seed enter its interval."""

    eval_tokens: int | None = None
    calib_samples: int = 32
    calib_len: int = 128
    group_size: int = 64          # 128 does not divide the model's d_ff = 704
    student_layers: int = 3
    student_steps: int = 120
    student_batch: int = 4
    student_seq: int = 128
    decode_prompt: int = 64
    decode_tokens: int = 32
    repeats: int = 3
    seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        if self.eval_tokens is not None:
            check_int("eval_tokens", self.eval_tokens, 2)
        for name in ("calib_samples", "calib_len", "student_layers", "student_steps", "student_batch", "student_seq",
                     "decode_prompt", "repeats"):
            check_int(name, getattr(self, name))
        check_int("group_size", self.group_size, 2)
        check_int("decode_tokens", self.decode_tokens, 2)       # the first token comes with the prefill
        if not isinstance(self.seeds, (tuple, list)) or not self.seeds:   # a record's JSON gives a list
            raise TypeError(f"seeds must be a non-empty tuple of ints, got {self.seeds!r}")
        for seed in self.seeds:
            check_int("seeds entry", seed, 0)


QUICK = Settings(eval_tokens=1024, calib_samples=4, calib_len=64, student_steps=4, student_batch=2,
                 student_seq=32, decode_prompt=8, decode_tokens=4, repeats=1, seeds=(0,))


@dataclass(frozen=True)
class Route:
    """One way to a smaller model: ``build(ctx)`` returns its stored form (a lab `GPT`) and the
    b-bit codes stored bit-packed for linears that run dequantized (``{name: QuantizedTensor}``).
    ``calibration``/``training``: what it needs besides the weights; ``matmul``: the tensor-core
    path its linears would take on a GPU (int8 and 2:4 sparse run at 2× bf16 dense on Hopper,
    datasheet; weight-only int4 and FP4 are widened to 16 bits for a bf16-rate MMA); ``seeded``: whether
    the build depends on ``ctx["seed"]`` (calibration windows drawn with it, a student trained with it),
    so that it is built and scored at every seed of the settings."""

    name: str
    build: Callable[[dict], tuple[GPT, dict]]
    calibration: bool
    training: bool
    matmul: str
    seeded: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not callable(self.build):
            raise TypeError(f"name must be a str and build a callable build(ctx), got {self.name!r} and "
                            f"{type(self.build).__name__}")
        for flag in ("calibration", "training", "seeded"):
            check_choice(flag, getattr(self, flag), (True, False))
        check_choice("matmul", self.matmul, MATMUL_RATE)


def _dense(ctx: dict) -> tuple[GPT, dict]:
    return copy.deepcopy(ctx["dense"]), {}


def _gptq3(ctx: dict) -> tuple[GPT, dict]:
    model = copy.deepcopy(ctx["dense"])
    report = quantize_model(model, "gptq", 3, ctx["settings"].group_size, ctx["calib"], progress=False)
    # codes stored with bf16 scales: the weights are loaded back from them
    return model, {f"{name}.weight": replace(entry["qtensor"], scale=entry["qtensor"].scale.to(torch.bfloat16).float())
                   for name, entry in report.items()}


def _w8a8(ctx: dict) -> tuple[GPT, dict]:
    model = copy.deepcopy(ctx["dense"])
    with torch.no_grad():
        stats = activation_abs_max(model, lambda: model(ctx["calib"]))
    smoothquant(model, stats, alpha=0.5)
    return w8a8_quantize_model(model, act="token"), {}


def _sparsegpt(ctx: dict, n: int | None, m: int | None) -> GPT:
    model = copy.deepcopy(ctx["dense"])
    prune_model(model, "sparsegpt", 0.5, ctx["calib"], n=n, m=m, progress=False)
    return model


def _unstructured(ctx: dict) -> tuple[GPT, dict]:
    return _sparsegpt(ctx, None, None), {}


def _sparse24(ctx: dict, int4_values: bool = False) -> tuple[GPT, dict]:
    """SparseGPT 2:4, stored compressed; ``int4_values``: the kept values in int4, g/2 per group (g columns)."""
    model = _sparsegpt(ctx, 2, 4)

    def layer(name: str, lin: nn.Linear) -> Sparse24Linear:
        return Sparse24Int4Linear(lin, ctx["settings"].group_size // 2) if int4_values else Sparse24Linear(lin)

    replace_linears(model, decoder_linear_names(model), layer)
    return model, {}


def _student(ctx: dict) -> GPT:
    """The distilled student (cached in ``ctx``): `gpt_student` from the teacher's layers, trained
    with `KDLoss` (τ = 1, α = 1) by `distill`, as in chapter 4."""
    if "student" not in ctx:
        s = ctx["settings"]
        batches = lm_batches(ctx["train_ids"], s.student_steps, s.student_batch, s.student_seq, ctx["seed"])
        student = gpt_student(ctx["dense"], s.student_layers, from_teacher=True, seed=ctx["seed"])
        kd = KDLoss(TeacherCache(ctx["dense"], keep=False), temperature=1.0, alpha=1.0)  # each batch once
        distill(student, batches, s.student_steps, kd, optim=Optim(5e-4, warmup=max(1, s.student_steps // 10)),
                progress=False)
        ctx["student"] = student.eval()
    return copy.deepcopy(ctx["student"])


def _draft(ctx: dict) -> GPT:
    """Chapter 6's draft: the same recipe with 2 layers, trained 1200 steps (`lab.infer.draft`, its checkpoint)."""
    from lab.infer.draft import DRAFT_DIR
    from lab.models import load_pretrained_lm

    return load_pretrained_lm("lab", path=DRAFT_DIR).to(ctx["device"]).eval()


def _int4(model: GPT, ctx: dict, method: str = "gptq") -> tuple[GPT, dict]:
    """``model`` with its decoder linears as `Int4Linear`s (g = ``settings.group_size``, bf16 scales),
    rounded by ``method`` ("rtn", or "gptq" on the calibration windows)."""
    calib = ctx["calib"] if method == "gptq" else None
    report = quantize_model(copy.deepcopy(model), method, 4, ctx["settings"].group_size, calib, progress=False)
    return int4_model(model, report, torch.bfloat16), {}


class FP4Linear(nn.Module):
    """y = x Ŵᵀ with Ŵ an MXFP4 or NVFP4 weight (`lab.quant.mx`) held as `lab.formats.fp4` lays it out: ``packed``
    E2M1 codes (N, K/2) uint8, ``scales`` (N, K/B) uint8 (E8M0 per 32 columns, or E4M3 per 16) and, for NVFP4,
    the float32 s_g as its four bytes (``global_scale_bits``, int32: a stored form rounds its float tensors to
    bf16, which s_g is not). Its stored bytes are the weight's `MXTensor.nbytes`. `lab.kernels.fp4_matmul` runs
    it: the PyTorch reference on a CPU; on a GPU the weight-only GEMV kernel of `lab.kernels.fp4_gemv` (codes
    widened to 16 bits in registers) up to `MAX_M` rows and, for more (a prefill), Ŵ dequantized once into x's
    dtype and a dense matmul, as `Int4Linear` does."""

    def __init__(self, weight: MXTensor) -> None:
        super().__init__()
        if not isinstance(weight, MXTensor):
            raise TypeError(f"weight must be an MXTensor (lab.quant.mx.quantize_mx), got {type(weight).__name__}")
        check_choice("weight.fmt", weight.fmt, tuple(FP4_FORMATS))
        if weight.block != FP4_FORMATS[weight.fmt][0]:                # the kernel's B
            raise ValueError(f"weight must have {weight.fmt}'s blocks of {FP4_FORMATS[weight.fmt][0]} (the kernel's), "
                             f"got blocks of {weight.block}")
        packed, scales, global_scale = fp4_weight(weight)
        self.fmt, self.global_scale = weight.fmt, global_scale       # the float the kernel takes: no read-back
        self.out_features, self.in_features = weight.shape
        self.register_buffer("packed", packed)
        self.register_buffer("scales", scales)
        if weight.fmt == "nvfp4":
            self.register_buffer("global_scale_bits", torch.tensor(global_scale, dtype=torch.float32).view(torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must be a tensor of shape (..., in_features={self.in_features}), got "
                             f"{tuple(getattr(x, 'shape', ())) or type(x).__name__}")
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] > MAX_M and runs_triton(x2.device):          # more rows than the GEMV kernel takes
            W_hat = dequantize_fp4(self.packed, self.scales, self.global_scale, FP4_FORMATS[self.fmt][1])
            y = x2 @ W_hat.to(x2.dtype).T
        else:
            y = fp4_matmul(x2, self.packed, self.scales, self.global_scale, self.fmt)
        return y.reshape(*x.shape[:-1], self.out_features)


def _fp4(ctx: dict, fmt: str) -> tuple[GPT, dict]:
    """Routes "mxfp4" and "nvfp4", weight-only: the dense model with every decoder linear's weight in ``fmt``
    (`quantize_mx`: no calibration data, no seed) as an `FP4Linear`; the embedding, the tied head and the norms
    as dense keeps them. Bytes: E2M1 elements, one byte per block scale, NVFP4's 4-byte s_g (what
    `mx_quantize_model` counts). Matmul: Hopper has no FP4 tensor core, so `lab.kernels.fp4_gemv` widens the
    codes and runs the MMA in 16-bit: the bf16 rate, as weight-only int4. Blackwell's native FP4 tensor cores
    (``tcgen05.mma .kind::mxf4nvf4``) would be faster; that is a datasheet figure, not used here."""
    model = copy.deepcopy(ctx["dense"])
    replace_linears(model, decoder_linear_names(model), lambda name, lin: FP4Linear(quantize_mx(lin.weight, fmt)))
    return model, {}


ROUTES = (
    Route("dense bf16", _dense, calibration=False, training=False, matmul="bf16", seeded=False),
    Route("RTN int4 g64", lambda ctx: _int4(copy.deepcopy(ctx["dense"]), ctx, "rtn"), calibration=False,
          training=False, matmul="bf16", seeded=False),
    Route("GPTQ int4 g64", lambda ctx: _int4(copy.deepcopy(ctx["dense"]), ctx), calibration=True, training=False,
          matmul="bf16"),
    Route("mxfp4", lambda ctx: _fp4(ctx, "mxfp4"), calibration=False, training=False, matmul="bf16", seeded=False),
    Route("nvfp4", lambda ctx: _fp4(ctx, "nvfp4"), calibration=False, training=False, matmul="bf16", seeded=False),
    Route("GPTQ int3 g64", _gptq3, calibration=True, training=False, matmul="bf16"),
    Route("W8A8 SmoothQuant", _w8a8, calibration=True, training=False, matmul="int8"),
    Route("SparseGPT 50%", _unstructured, calibration=True, training=False, matmul="bf16"),
    Route("SparseGPT 2:4", _sparse24, calibration=True, training=False, matmul="2:4 sparse"),
    Route("2:4 + int4", lambda ctx: _sparse24(ctx, int4_values=True), calibration=True, training=False,
          matmul="2:4 sparse"),
    Route("student 3 layers", lambda ctx: (_student(ctx), {}), calibration=False, training=True, matmul="bf16"),
    Route("student + GPTQ int4", lambda ctx: _int4(_student(ctx), ctx), calibration=True, training=True,
          matmul="bf16"),
    Route("draft 2 layers", lambda ctx: (_draft(ctx), {}), calibration=False, training=True, matmul="bf16",
          seeded=False),                                          # a stored checkpoint: one model
    Route("draft + GPTQ int4", lambda ctx: _int4(_draft(ctx), ctx), calibration=True, training=True,
          matmul="bf16"),
)
# route → the routes the leaderboard compares it with directly: the FP4 block formats against int4 in groups of 64
VERSUS = {fmt: ("RTN int4 g64", "GPTQ int4 g64") for fmt in ("mxfp4", "nvfp4")}
