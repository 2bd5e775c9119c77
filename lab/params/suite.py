"""Suite ``params`` of `lab.bench` (chapter 1): offloading and the memory model, measured.

* offload: resident / naive / prefetch forward time of a lab GPT whose layers live on the host,
  the prefetch speed-up over naive, bytes moved, measured host→device bandwidth, the cost model
  of `lab.params.offload` evaluated with that bandwidth, one traced forward per mode and, on CUDA,
  each mode's peak device memory above what was allocated before it (``peak_extra_mib``). The peak is
  read as soon as the traced forward ends, before its logits are checked against the resident
  mode's: the check's fp32 temporaries (≈ 1.6 GB at the GPU shape) would otherwise be the peak of
  every mode.
* memory: the analytical memory model of `lab.params.memory` against measured CUDA peaks for a
  training step and a decode step (on the CPU: the tensor storage of a training step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from tqdm.auto import tqdm

from lab.core.runtime import seed_everything
from lab.core.timing import time_ms
from lab.models.gpt import GPT, GPTConfig
from lab.params.offload import MODES, OffloadedGPT, layer_nbytes, offload_nbytes

T = TypeVar("T")


def offload_setup(device: torch.device, quick: bool) -> tuple[GPTConfig, torch.dtype, int, int]:
    """(config, dtype, batch, seq) of the offload benchmark.

    On a GPU, the book's 6.5M-parameter LM is useless here: a layer copies in microseconds and
    computes in less, so every mode measures launch overhead. The GPU model uses 7B-sized layers with
    grouped-query attention (C = 4096, 32 query / 8 kv heads, F = 11008; neither Llama-2-7B, which has
    32 kv heads, nor Llama-3-8B, whose F is 14336): 177M parameters = 354 MB in bf16 per layer, ~7 ms at
    ~50 GB/s over PCIe 5.0. A batch of 8 × 2048 tokens costs 2·177M·16384 ≈ 5.8 TFLOP per layer, ~9 ms
    on an H100, so per-layer copy ≈ compute: the regime where prefetching hides copies (ideal speed-up
    (copy + compute) / max(copy, compute) ≈ 1.8). Eight layers keep the host model at 2.9 GB.
    """
    if quick:
        return GPTConfig(vocab_size=256, context_length=32, d_model=64, n_layer=3, n_head=4,
                         n_kv_head=2, d_ff=128), torch.float32, 2, 16
    if device.type == "cuda":
        return GPTConfig(vocab_size=8192, context_length=2048, d_model=4096, n_layer=8, n_head=32,
                         n_kv_head=8, d_ff=11008), torch.bfloat16, 8, 2048
    return GPTConfig(vocab_size=8192, context_length=256, d_model=512, n_layer=4, n_head=8,
                     n_kv_head=4, d_ff=1408), torch.float32, 4, 256


def peak_extra_mib(fn: Callable[[], T], device: torch.device) -> tuple[T, float | None]:
    """(``fn()``, peak CUDA memory allocated while it ran above what was allocated before, MiB).

    The peak is read once the device has finished ``fn``'s work and before anything else runs;
    None on the CPU (no allocator statistics).
    """
    if device.type != "cuda":
        return fn(), None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = fn()
    torch.cuda.synchronize(device)
    return out, (torch.cuda.max_memory_allocated(device) - before) / 2**20


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| in fp32, as a Python float; the fp32 temporaries are freed on return."""
    return (a.float() - b.float()).abs().max().item()


def _h2d_gb_per_s(off: OffloadedGPT, device: torch.device, repeats: int) -> float:
    """Measured host→device bandwidth (GB/s) copying one layer into its device buffer."""
    dst, src = off.slots(1)[0], off.host[0]
    nbytes = layer_nbytes(off.layers[0])

    def copy() -> None:
        for name, t in dst.items():
            t.copy_(src[name], non_blocking=True)

    return nbytes / (time_ms(copy, device, repeats) * 1e-3) / 1e9


def bench_offload(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """Time the three modes of `OffloadedGPT` and compare them with the cost model."""
    cfg, dtype, batch, seq = offload_setup(device, quick)
    repeats = 3 if quick else 10
    seed_everything(0)
    with torch.device(device):  # initialise on the device (fast), then OffloadedGPT moves layers to host
        model = GPT(cfg).to(dtype)
    idx = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    off = OffloadedGPT(model, device)
    result = {"config": cfg.to_dict(), "dtype": str(dtype).removeprefix("torch."), "batch": batch,
              "seq_len": seq, "n_layer": cfg.n_layer, "layer_bytes": layer_nbytes(off.layers[0]),
              "bytes_per_forward": offload_nbytes(model), "h2d_gb_per_s": _h2d_gb_per_s(off, device, repeats),
              "ms": {}, "peak_extra_mib": {}, "max_abs_diff_vs_resident": {}, "trace": {}}
    reference = off.forward(idx, mode="resident")
    for mode in tqdm(MODES, desc="offload modes", disable=not progress):
        off.release()  # each mode allocates its own buffers (or resident copies) inside the measurement
        logits, peak = peak_extra_mib(lambda: off.forward(idx, mode=mode, trace=True), device)
        if peak is not None:
            result["peak_extra_mib"][mode] = peak
        result["max_abs_diff_vs_resident"][mode] = max_abs_diff(logits, reference)
        result["trace"][mode] = [e._asdict() for e in off.trace]
        del logits
        result["ms"][mode] = time_ms(lambda: off.forward(idx, mode=mode), device, repeats)
    ms = result["ms"]
    copy_ms = result["bytes_per_forward"] / (result["h2d_gb_per_s"] * 1e9) * 1e3
    result["speedup_prefetch_over_naive"] = ms["naive"] / ms["prefetch"]
    result["model_ms"] = {"copy": copy_ms, "naive": copy_ms + ms["resident"],
                          "prefetch": copy_ms / cfg.n_layer + max(copy_ms, ms["resident"])}
    return result


def bench_memory(device: torch.device, quick: bool = False) -> dict:
    """The memory model of `lab.params.memory` against a measurement, with measured / model ratios.

    CUDA: peak allocated bytes of a bf16-autocast AdamW training step (model:
    `training_peak_bytes`) and of one decode step with a KV cache of ``seq_len`` positions
    (model: `inference_memory` total = weights + KV cache). CPU: the tensor storage of an fp32
    training step (model: `training_memory` total); the decode step is CUDA-only.
    """
    from lab.params.counting import gpt_param_count
    from lab.params.measured_memory import (measure_decode_memory_cuda, measure_training_memory_cpu,
                                            measure_training_memory_cuda)
    from lab.params.memory import inference_memory, training_memory, training_peak_bytes

    cfg = GPTConfig(vocab_size=256, context_length=32, d_model=64, n_layer=2, n_head=4, n_kv_head=2,
                    d_ff=128) if quick else GPTConfig()
    batch, seq = (2, 16) if quick else (16, 256)
    seed_everything(0)
    out: dict = {"config": cfg.to_dict(), "batch": batch, "seq_len": seq}
    if device.type == "cuda":
        from lab.models.pretrained import to_llama

        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)  # anything alive before the measurement
        measured = {"training_step": measure_training_memory_cuda(GPT(cfg), batch, seq, "adamw", "bf16-mixed"),
                    "decode_step": measure_decode_memory_cuda(to_llama(GPT(cfg)), batch, seq)}
        predicted = {"training_step": training_peak_bytes(cfg, batch, seq, "adamw", "bf16-mixed"),
                     "decode_step": inference_memory(cfg, batch, seq)["total"]}
        # "peak" excludes the cuBLAS workspaces (no term of the model); they get their own line
        pairs = {k: (predicted[k], measured[k]["peak"] - base) for k in predicted}
        out["cublas_workspace_bytes"] = {k: measured[k]["cublas_workspace"] for k in measured}
        out["training_step_precision"] = "bf16-mixed"
    else:
        model_total = training_memory(gpt_param_count(cfg), "adamw", "fp32", config=cfg, batch=batch,
                                      seq_len=seq)["total"]
        pairs = {"training_step": (model_total,
                                   measure_training_memory_cpu(GPT(cfg), batch, seq, "adamw", "fp32")["total"])}
        out["training_step_precision"] = "fp32"
        out["decode_step"] = {"skipped": "the decode-step measurement needs a CUDA device"}
    for name, (model_bytes, measured) in pairs.items():
        out[name] = {"model_bytes": int(model_bytes), "measured_bytes": int(measured),
                     "ratio": measured / model_bytes}
    return out


def run(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """Suite ``params``: offloading and memory checks."""
    memory = bench_memory(device, quick)  # first, so no other tensor is alive on the device
    return {"memory": memory, "offload": bench_offload(device, quick, progress)}
