"""Benchmark records for the book: ``python -m lab.bench params [--out results/] [--quick]``.

Each run writes one JSON file, ``<out>/<suite>_<device-kind>.json`` (``..._quick.json`` with
``--quick``), stamped with the device name, torch / triton / Python versions, the UTC date and
the exact command, so every number a notebook shows can be traced to the run that produced it.
Timings are medians in milliseconds: `triton.testing.do_bench` on a GPU, the median of
``time.perf_counter`` repeats on the CPU. Notebooks read the records with `load_results`.

Suite ``params`` (chapter 1):
* offload: resident / naive / prefetch forward time of a lab GPT whose layers live on the host,
  the prefetch speed-up over naive, bytes moved, measured host→device bandwidth, the cost model
  of `lab.params.offload` evaluated with that bandwidth, and one traced forward per mode.
* memory: the analytical memory model of `lab.params.memory` against measured CUDA peaks for a
  training step and a decode step (on the CPU: the tensor storage of a training step).

Suite ``prune`` (chapter 2), 2:4 sparsity as speed:
* linear: y = x Wᵀ for large 2:4-pruned weights (out, in) and batch sizes M: dense ``x @ Wᵀ`` vs
  PyTorch's semi-structured sparse tensors (sparse tensor cores) vs the Triton kernel on the
  book's compressed format (`lab.kernels.sparse24_matmul`); each output is first checked
  against a float64 reference; median ms, speed-ups over dense, achieved GB/s (weight + x + y
  bytes) and the memory-bound ideal dense bytes / compressed bytes.
* model: a lab GPT with C = 4096 whose decoder linears are 2:4-pruned, dense vs semi-structured.
On the CPU only the PyTorch paths run (dense matmul vs decompress + matmul, small fp32 shapes).

Suite ``quant`` (chapter 3): int4 weight-only and W8A8 matmuls against bf16 cuBLAS and PyTorch's
int4/int8 ops over batch sizes 1 … 4096, and one-token decode of the book's model per format
(`lab.quant.bench`). Suite ``distill`` (chapter 4): the long distillation runs
(`lab.distill.experiments`). Suite ``dist`` (chapter 5): each parallel strategy's training step on
the local devices with nccl, or gloo on the CPU (`lab.dist.experiments`). Suite ``infer`` (chapter 6):
decode latency and tokens/s of every serving configuration at batch 1, 8, 32, each beside its
speed of light, and static vs continuous batching (`lab.infer.bench`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lab.atomic import atomic_write_json
from lab.data import REPO_ROOT
from lab.models.gpt import GPT, GPTConfig
from lab.params.offload import MODES, OffloadedGPT, layer_nbytes, offload_nbytes
from lab.prune.masks import nm_mask
from lab.prune.semi_structured import compress, compressed_nbytes, sparse_linear_torch, to_semi_structured_torch
from lab.runtime import get_device, seed_everything

RESULTS_DIR = REPO_ROOT / "results"


def device_name(device: torch.device) -> str:
    """`torch.cuda.get_device_name` on CUDA, else the CPU model string from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_kind(device: torch.device) -> str:
    """File-name slug of the device: "cpu", or e.g. "nvidia-h100-80gb-hbm3"."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")


def provenance(device: torch.device, argv: Sequence[str]) -> dict:
    """Device, library versions, ISO UTC date and the exact command of this run."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"device": device_name(device), "device_type": device.type, "torch": torch.__version__,
            "triton": triton_version, "python": platform.python_version(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "python -m lab.bench " + shlex.join(argv)}


def load_results(pattern: str = "*.json", root: str | Path = RESULTS_DIR) -> list[dict]:
    """The recorded JSON files under ``root`` matching ``pattern``, sorted by file name.

    Each dict gets a ``"_path"`` key naming its file.
    """
    paths = sorted(glob.glob(str(Path(root) / pattern)))
    if not paths:
        raise FileNotFoundError(f"no results match pattern={pattern!r} under {root}; "
                                "produce them with `python -m lab.bench ...`")
    return [{**json.loads(Path(p).read_text()), "_path": p} for p in paths]


def wall_clock_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` runs after one warm-up (perf_counter; the
    device is synchronised around each run). For functions that run long enough (≫ 1 ms) that
    launch and timer overheads do not matter: a whole generation, a training step."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn()`` in ms: `triton.testing.do_bench` on CUDA, `wall_clock_ms` on CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=200, rep=max(500, 100 * repeats), return_mode="median"))
    return wall_clock_ms(fn, device, repeats)


def offload_setup(device: torch.device, quick: bool) -> tuple[GPTConfig, torch.dtype, int, int]:
    """(config, dtype, batch, seq) of the offload benchmark.

    On a GPU, the book's 6.5M-parameter LM is useless here: a layer copies in microseconds and
    computes in less, so every mode measures launch overhead. The GPU model uses Llama-7B-sized
    layers (C = 4096, 32 query / 8 kv heads, F = 11008): 177M parameters = 354 MB in bf16 per
    layer, ~7 ms at ~50 GB/s over PCIe 5.0. A batch of 8 × 2048 tokens costs 2·177M·16384 ≈ 5.8
    TFLOP per layer, ~9 ms on an H100, so per-layer copy ≈ compute: the regime where prefetching
    hides copies (ideal speed-up (copy + compute) / max(copy, compute) ≈ 1.8). Eight layers keep
    the host model at 2.9 GB.
    """
    if quick:
        return GPTConfig(vocab_size=256, context_length=32, d_model=64, n_layer=3, n_head=4,
                         n_kv_head=2, d_ff=128), torch.float32, 2, 16
    if device.type == "cuda":
        return GPTConfig(vocab_size=8192, context_length=2048, d_model=4096, n_layer=8, n_head=32,
                         n_kv_head=8, d_ff=11008), torch.bfloat16, 8, 2048
    return GPTConfig(vocab_size=8192, context_length=256, d_model=512, n_layer=4, n_head=8,
                     n_kv_head=4, d_ff=1408), torch.float32, 4, 256


def _h2d_gb_per_s(off: OffloadedGPT, device: torch.device, repeats: int) -> float:
    """Measured host→device bandwidth (GB/s) copying one layer into its device buffer."""
    dst, src = off.slots(1)[0], off.host[0]
    nbytes = layer_nbytes(off.layers[0])

    def copy() -> None:
        for name, t in dst.items():
            t.copy_(src[name], non_blocking=True)

    return nbytes / (median_ms(copy, device, repeats) * 1e-3) / 1e9


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
        if device.type == "cuda":  # peak over what was allocated before: layer buffers + activations
            off.release()
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        logits = off.forward(idx, mode=mode, trace=True)
        result["max_abs_diff_vs_resident"][mode] = (logits.float() - reference.float()).abs().max().item()
        result["trace"][mode] = [e._asdict() for e in off.trace]
        if device.type == "cuda":
            result["peak_extra_mib"][mode] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        result["ms"][mode] = median_ms(lambda: off.forward(idx, mode=mode), device, repeats)
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
    from lab.params.memory import (inference_memory, measure_decode_memory_cuda,
                                   measure_training_memory_cpu, measure_training_memory_cuda,
                                   training_memory, training_peak_bytes)

    cfg = GPTConfig(vocab_size=256, context_length=32, d_model=64, n_layer=2, n_head=4, n_kv_head=2,
                    d_ff=128) if quick else GPTConfig()
    batch, seq = (2, 16) if quick else (16, 256)
    seed_everything(0)
    out: dict = {"config": cfg.to_dict(), "batch": batch, "seq_len": seq}
    if device.type == "cuda":
        from lab.models.pretrained import to_llama

        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)  # anything alive before the measurement
        pairs = {"training_step": (training_peak_bytes(cfg, batch, seq, "adamw", "bf16-mixed"),
                                   measure_training_memory_cuda(GPT(cfg), batch, seq, "adamw", "bf16-mixed")["peak"]),
                 "decode_step": (inference_memory(cfg, batch, seq)["total"],
                                 measure_decode_memory_cuda(to_llama(GPT(cfg)), batch, seq)["peak"])}
        pairs = {k: (m, x - base) for k, (m, x) in pairs.items()}
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


def bench_params(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """Suite ``params``: offloading and memory checks."""
    memory = bench_memory(device, quick)  # first, so no other tensor is alive on the device
    return {"memory": memory, "offload": bench_offload(device, quick, progress)}


def _linear_paths(w: torch.Tensor) -> dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], int]]:
    """name → (x ↦ x Wᵀ, weight bytes read) for a 2:4-sparse weight (out, in) on its device."""
    from lab.kernels.sparse24_matmul import sparse24_matmul_torch, sparse24_matmul_triton

    out_features, in_features = w.shape
    nbytes = compressed_nbytes(out_features, in_features, w.dtype)
    values, meta = compress(w)
    paths = {"dense": (lambda x: x @ w.t(), nbytes["dense"])}
    if w.device.type != "cuda":
        paths["decompress_matmul"] = (
            lambda x: sparse24_matmul_torch(x, values, meta, out_features, in_features), nbytes["compressed"])
        return paths
    w_sparse = to_semi_structured_torch(w)  # same 4 bits of metadata per group, NVIDIA's layout
    paths["torch_24"] = (lambda x: sparse_linear_torch(x, w_sparse), nbytes["compressed"])
    paths["triton_24"] = (
        lambda x: sparse24_matmul_triton(x, values, meta, out_features, in_features), nbytes["compressed"])
    return paths


def prune_setup(device: torch.device, quick: bool) -> tuple[list[tuple[int, int]], list[torch.dtype], list[int]]:
    """(weight shapes (out, in), dtypes, batch sizes M) of the linear benchmark.

    CUDA: Llama-7B/13B-sized projections (C = 4096 square, 8192 square, 4096 → 11008 up and
    11008 → 4096 down) in fp16 and bf16, M from decode (1) to prefill (2048) tokens.
    """
    if device.type == "cuda" and not quick:
        return [(4096, 4096), (8192, 8192), (11008, 4096), (4096, 11008)], \
            [torch.float16, torch.bfloat16], [1, 16, 128, 2048]
    if quick:
        return [(64, 128)], [torch.float16 if device.type == "cuda" else torch.float32], [1, 16]
    return [(1024, 1024), (2816, 1024)], [torch.float32], [1, 16, 128]


def bench_prune_linear(device: torch.device, quick: bool = False, progress: bool = True) -> list[dict]:
    """One row per (shape, dtype, M): correctness vs float64, then median ms, speed-ups and GB/s."""
    shapes, dtypes, batches = prune_setup(device, quick)
    repeats = 3 if quick else 10
    rows = []
    bar = tqdm(total=len(shapes) * len(dtypes) * len(batches), desc="2:4 linear", disable=not progress)
    for (out_features, in_features), dtype in [(s, d) for s in shapes for d in dtypes]:
        seed_everything(0)
        w = torch.randn(out_features, in_features, device=device, dtype=dtype)
        w = w * nm_mask(w)
        paths = _linear_paths(w)
        nbytes = compressed_nbytes(out_features, in_features, dtype)
        w64 = w.double()
        elem = w.element_size()
        for M in batches:
            x = torch.randn(M, in_features, device=device, dtype=dtype)
            ref = x.double() @ w64.t()
            row = {"out_features": out_features, "in_features": in_features,
                   "dtype": str(dtype).removeprefix("torch."), "batch": M, "ms": {}, "max_rel_err": {},
                   "gb_per_s": {}, "tflop_per_s": {}, "weight_bytes": {name: b for name, (_, b) in paths.items()}}
            for name, (fn, weight_bytes) in paths.items():
                err = ((fn(x).double() - ref).abs().max() / ref.abs().max()).item()
                if not err <= (1e-4 if dtype == torch.float32 else 2e-2):
                    raise RuntimeError(f"{name} is wrong for W {out_features}x{in_features} {dtype}, M={M}: "
                                       f"max relative error {err:.3g} vs float64")
                ms = median_ms(lambda: fn(x), device, repeats)
                row["max_rel_err"][name], row["ms"][name] = err, ms
                row["gb_per_s"][name] = (weight_bytes + elem * M * (in_features + out_features)) / (ms * 1e-3) / 1e9
                row["tflop_per_s"][name] = 2 * M * out_features * in_features / (ms * 1e-3) / 1e12
            row["speedup_over_dense"] = {name: row["ms"]["dense"] / ms
                                         for name, ms in row["ms"].items() if name != "dense"}
            row["ideal_memory_bound_speedup"] = nbytes["dense"] / nbytes["compressed"]
            rows.append(row)
            bar.update()
    bar.close()
    return rows


def bench_prune_model(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """Forward of a lab GPT (C = 4096, 4 layers, bf16) with 2:4-pruned decoder linears: dense vs 2:4.

    The pruned weights are timed first as dense tensors (same cost as unpruned), then swapped for
    `to_semi_structured_torch` tensors (nn.Linear then runs on sparse tensor cores); the embedding
    and the tied LM head stay dense. CUDA only.
    """
    if device.type != "cuda":
        return {"skipped": "the 2:4 model forward needs CUDA (sparse tensor cores)"}
    cfg = GPTConfig(vocab_size=8192, context_length=2048, d_model=4096, n_layer=4, n_head=32, n_kv_head=8,
                    d_ff=11008)
    if quick:
        cfg = GPTConfig(vocab_size=256, context_length=64, d_model=256, n_layer=2, n_head=4, n_kv_head=2, d_ff=512)
    inputs = {"decode_16x1": (16, 1), "prefill_8x256": (8, 256)}
    repeats = 3 if quick else 10
    seed_everything(0)
    with torch.device(device):
        model = GPT(cfg).to(torch.bfloat16).eval()
    linears = [mod for name, mod in model.named_modules()
               if name.startswith("layers.") and isinstance(mod, torch.nn.Linear)]
    idx = {name: torch.randint(0, cfg.vocab_size, shape, device=device) for name, shape in inputs.items()}
    out: dict = {"config": cfg.to_dict(), "dtype": "bfloat16", "inputs": {k: list(v) for k, v in inputs.items()},
                 "n_sparse_linears": len(linears), "ms": {"dense": {}, "sparse_24": {}},
                 "speedup_over_dense": {}, "max_rel_diff_vs_dense": {}}
    with torch.inference_mode():
        for lin in linears:
            lin.weight.mul_(nm_mask(lin.weight))
        dense_logits = {name: model(i).float() for name, i in idx.items()}
        for name, i in tqdm(idx.items(), desc="dense forward", disable=not progress):
            out["ms"]["dense"][name] = median_ms(lambda: model(i), device, repeats)
        for lin in linears:
            lin.weight = torch.nn.Parameter(to_semi_structured_torch(lin.weight.detach()), requires_grad=False)
        for name, i in tqdm(idx.items(), desc="2:4 forward", disable=not progress):
            ref = dense_logits[name]
            out["max_rel_diff_vs_dense"][name] = ((model(i).float() - ref).abs().max() / ref.abs().max()).item()
            out["ms"]["sparse_24"][name] = median_ms(lambda: model(i), device, repeats)
            out["speedup_over_dense"][name] = out["ms"]["dense"][name] / out["ms"]["sparse_24"][name]
    return out


def bench_prune(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """Suite ``prune``: 2:4 matmuls (dense vs semi-structured vs Triton) and a 2:4 model forward."""
    label = ("CUDA: dense torch.matmul vs torch semi-structured 2:4 vs the Triton kernel on compressed 2:4"
             if device.type == "cuda" else
             "CPU: PyTorch paths only (dense matmul vs decompress + matmul), small fp32 shapes; "
             "the Triton kernel and sparse tensor cores need CUDA")
    return {"label": label, "linear": bench_prune_linear(device, quick, progress),
            "model": bench_prune_model(device, quick, progress)}


def bench_quant(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """Suite ``quant``: int4 weight-only and W8A8 kernels, and decode speed per format (`lab.quant.bench`)."""
    from lab.quant.bench import bench_quant as run

    return run(device, quick, progress, median_ms=median_ms)


def bench_distill(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """Suite ``distill``: the long distillation runs of chapter 4 (`lab.distill.experiments.run_full`)."""
    from lab.distill.experiments import run_full

    return run_full(device, quick, progress)


def bench_dist(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """Suite ``dist``: the training step of every strategy on the local devices (`lab.dist.experiments.run_full`)."""
    from lab.dist.experiments import run_full

    return {"full": run_full(device, quick, progress)}


def bench_infer(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """Suite ``infer``: decode tokens/s per configuration against the speed of light (`lab.infer.bench`)."""
    from lab.infer.bench import bench_infer as run

    return run(device, quick, progress, wall_clock_ms=wall_clock_ms)


SUITES = {"params": bench_params, "prune": bench_prune, "quant": bench_quant, "distill": bench_distill,
          "dist": bench_dist, "infer": bench_infer}


def main(argv: Sequence[str] | None = None) -> Path:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the suite, write its record; return the path."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m lab.bench", description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the JSON record")
    parser.add_argument("--quick", action="store_true", help="tiny shapes (smoke test)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: lab.runtime.get_device()")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    device = torch.device(args.device) if args.device else get_device()
    record = provenance(device, argv)
    record["suite"], record["quick"] = args.suite, args.quick
    record.update(SUITES[args.suite](device, args.quick, not args.no_progress))
    name = f"{args.suite}_{device_kind(device)}{'_quick' if args.quick else ''}.json"
    path = atomic_write_json(args.out / name, record)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
