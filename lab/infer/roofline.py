"""The speed of light of a decode step: the bytes it must read over the memory bandwidth.

A decode step of batch B at context length S reads every weight once (shared by the B rows) and,
with a KV cache, every cached key and value of every row:

    bytes = Ψ_bytes + B · 2 · L · H_kv · D · S · b_kv            (b_kv bytes per cache element)
    FLOPs ≈ 2 · N · B + 4 · L · H · D · S · B                      (N = multiply-adds per token in the linears)

and produces B tokens. Ψ_bytes is what the weights occupy as stored: 2 bytes per bf16 parameter,
≈ 1 for int8, ≈ 0.5 + 2·2/g for int4 with group size g (codes + scales + zeros). Without a cache the
step re-runs all S positions: FLOPs ≈ 2·N·B·S, and the step becomes compute bound once S is large.
That is also the cost of a prefill of B prompts of S tokens: it reads the weights once for B·S tokens,
so it is compute bound only when 2·N·B·S / peak ≥ Ψ_bytes / bandwidth, i.e. from about
B·S ≈ Ψ_bytes·peak / (2·N·bandwidth) tokens (= peak / bandwidth for bf16, ≈ 295 on the H100 SXM5's
datasheet figures); `prefill_crossover_tokens` finds it with the attention FLOPs included.

    t_min = max(bytes / bandwidth, FLOPs / peak),   tokens/s ≤ B / t_min.

The ceilings come from `lab.core.ceilings`, the one source of them: ``bandwidth`` and ``peak_flops``
left at None mean `device_ceilings()` for an H100 SXM5, i.e. the copy bandwidth and bf16 matmul rate
measured on one when ``results/`` holds such a record, otherwise its datasheet figures (3.35 TB/s
HBM3, 989 TFLOP/s dense bf16), labelled as such in ``device_ceilings().source``. `lab.bench` measures
the ceilings of the device it runs on and passes them in.

One matmul Y = X Wᵀ (X: M × K activations, W: N × K weights) on its own (`matmul_cost`):

    FLOPs = 2·M·N·K,   bytes = N·K·b_w/8 + b_a·M·(N + K),   I = FLOPs / bytes   (FLOP per byte)

(b_w bits per weight as stored, b_a bytes per activation element: X read, Y written), and the roofline
is the FLOP rate attainable at intensity I, min(I · bandwidth, peak) (`attainable_flops`): memory bound
below the ridge point peak / bandwidth (≈ 295 FLOP/byte with the H100 SXM5 datasheet figures), compute
bound above it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from lab.core.ceilings import device_ceilings
from lab.core.checks import check_choice, check_int, check_number
from lab.models.gpt import GPT, check_gpt


def _ceilings(bandwidth: float | None, peak_flops: float | None) -> tuple[float, float]:
    """(bandwidth, peak_flops) as given, each None replaced by `device_ceilings()`'s (H100 SXM5)."""
    if bandwidth is None or peak_flops is None:
        default = device_ceilings()
        bandwidth = default.bandwidth if bandwidth is None else bandwidth
        peak_flops = default.peak_flops if peak_flops is None else peak_flops
    check_number("bandwidth", bandwidth, low=0, closed=(False, True))
    check_number("peak_flops", peak_flops, low=0, closed=(False, True))
    return bandwidth, peak_flops


def weight_bytes(model: GPT) -> int:
    """Bytes of weights a decode step reads: every parameter and buffer as stored (int4/int8 layers
    included), the tied embedding once (it is the LM head); an untied input embedding only gives one
    row per token, so it is left out. Works on a model on the ``meta`` device (sizes without storage)."""
    check_gpt("model", model)
    total = sum(t.nbytes for t in list(model.parameters()) + list(model.buffers()))   # each tensor once
    if model.embed_tokens.weight is not model.lm_head.weight:
        total -= model.embed_tokens.weight.nbytes
    return total


def decoder_linear_bytes_at(model: GPT, bits_per_weight: float) -> int:
    """`weight_bytes` if the decoder linears were stored at ``bits_per_weight`` bits per weight (the rest as
    it is): 16 for bf16, 8 + 32/C_in for int8 with fp32 row scales ≈ 8, 4 + 32/g for int4 with 16-bit scale and
    zero per group of g, 9 for 2:4 sparse bf16 (half the values + 4 bits of metadata per group of 4)."""
    check_gpt("model", model)
    check_number("bits_per_weight", bits_per_weight, low=0, closed=(False, True))
    linears = [m for name, m in model.named_modules() if name.startswith("layers.") and isinstance(m, nn.Linear)]
    stored = sum(m.weight.nbytes for m in linears)
    return weight_bytes(model) - stored + round(sum(m.weight.numel() for m in linears) * bits_per_weight / 8)


def matmul_params(model: GPT) -> int:
    """N: multiply-accumulates per token in the linears (decoder linears + LM head), whatever their storage."""
    n = 0
    for module in model.modules():
        if hasattr(module, "in_features") and hasattr(module, "out_features") and not list(module.children()):
            n += module.in_features * module.out_features
    return n


def kv_bytes_per_position(model: GPT, dtype_bytes: int) -> int:
    """2 · Σ_l H_kv,l · D · b_kv: the keys and values one position adds to the cache (``dtype_bytes`` = b_kv:
    2 for bf16, 1 for fp8/int8)."""
    check_gpt("model", model)
    check_number("dtype_bytes", dtype_bytes, low=0, closed=(False, True))
    return 2 * sum(block.attn.k_proj.out_features for block in model.layers) * dtype_bytes  # H_kv,l · D each


def decode_step_cost(model: GPT, batch: int, context: int, kv_cache: bool = True, kv_dtype_bytes: int = 2,
                     weights: int | None = None) -> dict[str, float]:
    """{"bytes", "flops"} of one decode step of ``batch`` rows at context length ``context``.

    ``weights``: bytes of weights read per step (default `weight_bytes`(model); pass
    `decoder_linear_bytes_at` to price another storage format without building it).
    """
    check_gpt("model", model)
    check_int("batch", batch, minimum=None)
    check_int("context", context, minimum=None)
    if batch < 1 or context < 1:
        raise ValueError(f"batch and context must be >= 1, got batch={batch}, context={context}")
    check_choice("kv_cache", kv_cache, (True, False))
    check_number("kv_dtype_bytes", kv_dtype_bytes, low=0, closed=(False, True))
    if weights is not None:
        check_number("weights", weights, low=0)
    cfg = model.config
    weights = weight_bytes(model) if weights is None else weights
    attention_flops = 4 * cfg.n_layer * cfg.n_head * cfg.head_dim * context * batch
    if kv_cache:
        return {"bytes": weights + batch * context * kv_bytes_per_position(model, kv_dtype_bytes),
                "flops": 2 * matmul_params(model) * batch + attention_flops}
    return {"bytes": weights, "flops": 2 * matmul_params(model) * batch * context + attention_flops * context / 2}


def speed_of_light_ms(cost: dict[str, float], bandwidth: float | None = None,
                      peak_flops: float | None = None) -> dict:
    """{"memory_ms", "compute_ms", "ms"}: bytes / bandwidth, FLOPs / peak, and the larger of the two.

    ``bandwidth`` (bytes/s) and ``peak_flops`` (FLOP/s): None takes `device_ceilings()`'s (module docstring).
    """
    if not isinstance(cost, Mapping) or not {"bytes", "flops"} <= set(cost):
        raise TypeError(f"cost must be a dict with 'bytes' and 'flops' (decode_step_cost's), got {cost!r}")
    for key in ("bytes", "flops"):
        check_number(f"cost[{key!r}]", cost[key], low=0)
    bandwidth, peak_flops = _ceilings(bandwidth, peak_flops)
    memory_ms, compute_ms = cost["bytes"] / bandwidth * 1e3, cost["flops"] / peak_flops * 1e3
    return {"memory_ms": memory_ms, "compute_ms": compute_ms, "ms": max(memory_ms, compute_ms)}


def matmul_cost(M: int, N: int, K: int, bits_per_weight: float = 16, act_bytes: int = 2) -> dict[str, float]:
    """{"bytes", "flops", "intensity"} of one Y (M, N) = X (M, K) · Wᵀ with W (N, K) stored at
    ``bits_per_weight`` bits per weight (16: bf16; 4 + 32/g: int4 with a 16-bit scale and zero per group
    of g) and activations of ``act_bytes`` bytes: flops = 2·M·N·K, bytes = N·K·b_w/8 + b_a·M·(N + K)
    (W and X read once, Y written once: no cache reuse assumed), intensity = flops / bytes (FLOP/byte).
    """
    for name, value in (("M", M), ("N", N), ("K", K)):
        check_int(name, value)
    check_number("bits_per_weight", bits_per_weight, low=0, closed=(False, True))
    check_number("act_bytes", act_bytes, low=0, closed=(False, True))
    flops = 2 * M * N * K
    nbytes = N * K * bits_per_weight / 8 + act_bytes * M * (N + K)
    return {"bytes": nbytes, "flops": flops, "intensity": flops / nbytes}


def attainable_flops(intensity, bandwidth: float | None = None, peak_flops: float | None = None):
    """The roofline: min(I · bandwidth, peak_flops) FLOP/s at arithmetic intensity I (FLOP/byte).

    ``intensity``: a number (returns a float) or a tensor of intensities (returns a tensor, elementwise).
    ``bandwidth`` and ``peak_flops``: None takes `device_ceilings()`'s (module docstring).
    """
    bandwidth, peak_flops = _ceilings(bandwidth, peak_flops)
    if isinstance(intensity, torch.Tensor):
        if intensity.dtype == torch.bool or intensity.is_complex():
            raise TypeError(f"intensity must be a tensor of real numbers (FLOP/byte), got {intensity.dtype}")
        if intensity.numel() and (not torch.isfinite(intensity).all() or (intensity < 0).any()):
            raise ValueError(f"intensity must be finite and >= 0 (FLOP/byte), got values in "
                             f"[{intensity.min().item():.4g}, {intensity.max().item():.4g}]")
        return torch.clamp(intensity * bandwidth, max=peak_flops)
    check_number("intensity", intensity, low=0)
    return min(float(intensity) * bandwidth, peak_flops)


def prefill_crossover_tokens(model: GPT, bandwidth: float | None = None, peak_flops: float | None = None,
                             batch: int = 1, weights: int | None = None) -> int:
    """The smallest prompt length S at which a prefill of ``batch`` prompts of S tokens is compute bound on the
    roofline: FLOPs / peak ≥ bytes / bandwidth with `decode_step_cost`(model, batch, S, kv_cache=False)
    (weights read once, activations not counted). ``bandwidth``, ``peak_flops``: None takes `device_ceilings()`'s;
    ``weights``: bytes of weights (default `weight_bytes`). ValueError if no S ≤ the model's context is."""
    check_gpt("model", model)
    bandwidth, peak_flops = _ceilings(bandwidth, peak_flops)
    check_int("batch", batch)

    def compute_bound(S: int) -> bool:
        cost = decode_step_cost(model, batch, S, kv_cache=False, weights=weights)
        return cost["flops"] / peak_flops >= cost["bytes"] / bandwidth

    lo, hi = 1, model.config.context_length
    if not compute_bound(hi):
        raise ValueError(f"a prefill of {batch} x {hi} tokens (the model's context) is still memory bound")
    while lo < hi:                                                  # FLOPs grow with S, bytes do not
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if compute_bound(mid) else (mid + 1, hi)
    return lo
