"""Suite ``prune`` of `lab.bench` (chapter 2): 2:4 sparsity as speed.

* linear: y = x Wᵀ for large 2:4-pruned weights (out, in) and batch sizes M: dense ``x @ Wᵀ`` vs
  PyTorch's semi-structured sparse tensors (sparse tensor cores) vs the Triton kernel on the
  book's compressed format (`lab.kernels.sparse24`); each output is first checked
  against a float64 reference (a wrong path is recorded with its error, not timed); median ms,
  speed-ups over dense, achieved GB/s (weight + x + y bytes) and the memory-bound ideal
  dense bytes / compressed bytes.
* model: a lab GPT with C = 4096 whose decoder linears are 2:4-pruned, dense vs semi-structured.
On the CPU only the PyTorch paths run (dense matmul vs decompress + matmul, small fp32 shapes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from lab.core.runtime import seed_everything
from lab.core.timing import check_then_time, time_ms
from lab.formats.sparse24 import compress, compressed_nbytes
from lab.kernels.aot.shapes import MatmulShapes
from lab.models.gpt import GPT, GPTConfig
from lab.prune.masks import nm_mask
from lab.prune.semi_structured import sparse_linear_torch, to_semi_structured_torch


def _linear_paths(w: torch.Tensor) -> dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], int]]:
    """name → (x ↦ x Wᵀ, weight bytes read) for a 2:4-sparse weight (out, in) on its device."""
    from lab.kernels.sparse24 import sparse24_matmul_torch, sparse24_matmul_triton, sparse24_matmul_v2

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
    if in_features % 32 == 0:                                    # v2 reads the metadata as 32-bit words
        paths["triton_24_v2"] = (
            lambda x: sparse24_matmul_v2(x, values, meta, out_features, in_features), nbytes["compressed"])
    return paths


def prune_setup(device: torch.device, quick: bool, short: bool = False
                ) -> tuple[list[tuple[int, int]], list[torch.dtype], list[int]]:
    """(weight shapes (out, in), dtypes, batch sizes M) of the linear benchmark.

    CUDA: Llama-7B/13B-sized projections (C = 4096 square, 8192 square, 4096 → 11008 up and
    11008 → 4096 down) in fp16 and bf16, M from decode (1) to prefill (2048) tokens; ``short``
    keeps the down projection at M = 1 and 2048 (the GPU run's form).
    """
    if quick:
        return [(64, 128)], [torch.float16 if device.type == "cuda" else torch.float32], [1, 16]
    if device.type == "cuda":
        if short:
            return [(4096, 11008)], [torch.float16, torch.bfloat16], [1, 2048]
        return [(4096, 4096), (8192, 8192), (11008, 4096), (4096, 11008)], \
            [torch.float16, torch.bfloat16], [1, 16, 128, 2048]
    return [(1024, 1024), (2816, 1024)], [torch.float32], [1, 16, 128]


def kernel_shapes() -> list[MatmulShapes]:
    """The 2:4 matmuls this suite runs on a GPU (full and short form), for the ahead-of-time compile."""
    cuda = torch.device("cuda")
    return [MatmulShapes(label, ("sparse24",), tuple(Ms), tuple(weights))
            for label, (weights, _, Ms) in (("prune bench 2:4 linear", prune_setup(cuda, quick=False)),
                                            ("prune bench 2:4 linear, short", prune_setup(cuda, quick=False, short=True)))]


def bench_prune_linear(device: torch.device, quick: bool = False, progress: bool = True, *,
                       shapes: Sequence[tuple[int, int]] | None = None, dtypes: Sequence[torch.dtype] | None = None,
                       batches: Sequence[int] | None = None, short: bool = False) -> list[dict]:
    """One row per (shape, dtype, M): correctness vs float64, then median ms, speed-ups and GB/s.

    ``shapes``, ``dtypes``, ``batches`` override `prune_setup`'s choice for this device.
    """
    default_shapes, default_dtypes, default_batches = prune_setup(device, quick, short)
    shapes, dtypes, batches = shapes or default_shapes, dtypes or default_dtypes, batches or default_batches
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
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        for M in batches:
            x = torch.randn(M, in_features, device=device, dtype=dtype)
            ref = x.double() @ w64.t()
            row = {"out_features": out_features, "in_features": in_features,
                   "dtype": str(dtype).removeprefix("torch."), "batch": M, "ms": {}, "max_rel_err": {},
                   "gb_per_s": {}, "tflop_per_s": {}, "weight_bytes": {name: b for name, (_, b) in paths.items()},
                   "wrong": {}}
            for name, (fn, weight_bytes) in paths.items():
                entry = check_then_time(lambda: fn(x), ref, tol, device, repeats)
                row["max_rel_err"][name] = entry["max_rel_err"]
                if entry["ms"] is None:
                    row["wrong"][name] = entry["wrong"]
                    continue
                ms = row["ms"][name] = entry["ms"]
                row["gb_per_s"][name] = (weight_bytes + elem * M * (in_features + out_features)) / (ms * 1e-3) / 1e9
                row["tflop_per_s"][name] = 2 * M * out_features * in_features / (ms * 1e-3) / 1e12
            if "dense" in row["ms"]:
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
            out["ms"]["dense"][name] = time_ms(lambda: model(i), device, repeats)
        for lin in linears:
            lin.weight = torch.nn.Parameter(to_semi_structured_torch(lin.weight.detach()), requires_grad=False)
        for name, i in tqdm(idx.items(), desc="2:4 forward", disable=not progress):
            ref = dense_logits[name]
            out["max_rel_diff_vs_dense"][name] = ((model(i).float() - ref).abs().max() / ref.abs().max()).item()
            out["ms"]["sparse_24"][name] = time_ms(lambda: model(i), device, repeats)
            out["speedup_over_dense"][name] = out["ms"]["dense"][name] / out["ms"]["sparse_24"][name]
    return out


def run(device: torch.device, quick: bool = False, progress: bool = True, short: bool = False) -> dict:
    """Suite ``prune``: 2:4 matmuls (dense vs semi-structured vs Triton) and a 2:4 model forward.

    ``short``: the GPU run's form (one weight shape, M = 1 and 2048; the model forward unchanged).
    """
    label = ("CUDA: dense torch.matmul vs torch semi-structured 2:4 vs the Triton kernel on compressed 2:4"
             if device.type == "cuda" else
             "CPU: PyTorch paths only (dense matmul vs decompress + matmul), small fp32 shapes; "
             "the Triton kernel and sparse tensor cores need CUDA")
    return {"label": label, "linear": bench_prune_linear(device, quick, progress, short=short),
            "model": bench_prune_model(device, quick, progress)}
