"""Suite ``quant`` of `lab.bench` (chapter 3): the integer kernels against bf16 cuBLAS and PyTorch's own.

* int4: y = x Ŵᵀ for an 8192 × 8192 weight quantized to 4 bits in groups of 128, batch M in
  (1, 4, 16, 64, 256, 4096): bf16 ``torch.matmul`` (cuBLAS) vs the dense Triton kernel (`lab.kernels.dense`) vs
  `int4_weight_only_matmul` (Triton, v1) vs `int4_gemv_v2` (Triton, v2, M ≤ 16) vs what `Int4Linear` runs
  (`lab.quant.linear.int4_matmul`) vs ``torch._weight_int4pack_mm``; bytes moved (weight + scales/zeros + x + y),
  GB/s, TFLOP/s and the arithmetic intensity 2MNK / bytes for the roofline; each path's agreement with the
  float64 product rounded to x's dtype.
* int8: (M, K) × (K, N) with M = 4096, N = K = 8192 (and the same batch sweep): bf16 ``torch.matmul``
  vs `int8_matmul` (Triton, scales fused) vs ``torch._int_mm`` followed by separate scaling.
* decode: one-token forward of the book's model (bf16 vs W8A8 vs int4 weight-only), tokens/s.

Every path is first checked against a float64 reference of the same integers; a path whose error is
too large is recorded with its error and not timed. On the CPU only the PyTorch paths run, on small
shapes (the numbers then say nothing about a GPU).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from lab.core.runtime import seed_everything
from lab.core.timing import check_then_time, time_ms
from lab.formats.int4 import pack_int4_v2
from lab.kernels.aot.shapes import MatmulShapes
from lab.kernels.dense import dense_matmul
from lab.kernels.int4 import MAX_M as V2_MAX_M
from lab.kernels.int4 import int4_gemv_v2, int4_weight_only_matmul
from lab.kernels.int8 import int8_matmul, tuned_block
from lab.models.pretrained import book_config
from lab.quant.affine import dequantize, quantize
from lab.quant.linear import (decoder_linear_shapes, int4_matmul, int4_model, quantize_rows_symmetric,
                              w8a8_quantize_model)
from lab.quant.model import quantize_model
from lab.quant.packing import pack_quantized_weight

BATCHES = (1, 4, 16, 64, 256, 4096)
QUICK_BATCHES = (1, 16)
GROUP_SIZE = 128                # g of the matmul sweep
DECODE_GROUP_SIZE = 64          # g of the decode's RTN int4 (the book's d_ff = 704 is no multiple of 128)


def weight_size(device: torch.device, quick: bool) -> int:
    """N = K of the suite's weight: 8192 on a GPU, 512 on the CPU or with ``quick``."""
    return 8192 if device.type == "cuda" and not quick else 512


def _torch_int4pack(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int):
    """PyTorch's tinygemm int4 layout for the same Ŵ: its dequantization is (q − 8)·s + z', z' = (8 − z)·s."""
    packed = ((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8)
    w_int4 = torch._convert_weight_to_int4pack(packed, 8)
    scale_and_zero = torch.stack([scales, (8 - zeros) * scales], dim=-1).to(torch.bfloat16).contiguous()
    return lambda x: torch._weight_int4pack_mm(x, w_int4, group_size, scale_and_zero)


def bench_int4(device: torch.device, quick: bool = False, progress: bool = True, *, size: int | None = None,
               batches: Sequence[int] | None = None, group_size: int = GROUP_SIZE) -> list[dict]:
    """One row per batch M: y = x Ŵᵀ with Ŵ (N, K = ``size``) in int4, groups of ``group_size``, per path.

    Defaults: the suite's N = K (`_size`) and batches (`BATCHES`, or `QUICK_BATCHES` with ``quick``).
    """
    cuda = device.type == "cuda"
    N = K = size or weight_size(device, quick)
    dtype = torch.bfloat16 if cuda else torch.float32
    seed_everything(0)
    w = torch.randn(N, K, device=device)
    qt = quantize(w, 4, granularity="group", group_size=group_size)
    packed, scales, zeros, _ = pack_quantized_weight(qt)
    scales_e, zeros_e = scales.to(dtype), zeros.to(dtype)
    w_hat = dequantize(qt)
    w_dense = w_hat.to(dtype)
    int4_bytes = N * K // 2 + 2 * (N * K // group_size) * scales_e.element_size()
    packed_v2 = pack_int4_v2(qt.qdata, group_size)                 # the v2 layout, once
    dense_bytes = N * K * w_dense.element_size()
    paths = {"bf16_matmul" if cuda else "fp32_matmul": (lambda x: x @ w_dense.T, dense_bytes),
             "dense_triton": (lambda x: dense_matmul(x, w_dense), dense_bytes),
             "int4_lab": (lambda x: int4_weight_only_matmul(x, packed, scales_e, zeros_e, group_size), int4_bytes),
             "int4_lab_v2": (lambda x: int4_gemv_v2(x, packed_v2, scales_e, zeros_e, group_size), int4_bytes),
             "int4_layer": (lambda x: int4_matmul(x, packed_v2, scales_e, zeros_e, group_size), int4_bytes)}
    if cuda:
        try:
            paths["int4_torch"] = (_torch_int4pack(qt.qdata.int(), scales, zeros, group_size),
                                   N * K // 2 + 2 * 2 * (N * K // group_size))
        except Exception as error:  # noqa: BLE001 - the private API changes between releases: recorded
            paths["int4_torch_unavailable"] = (None, f"{type(error).__name__}: {error}")
    rows = []
    for M in tqdm(batches or (QUICK_BATCHES if quick else BATCHES), desc="int4 matmul", disable=not progress):
        x = torch.randn(M, K, device=device, dtype=dtype)
        ref = x.double() @ w_hat.double().T
        row = {"M": M, "N": N, "K": K, "group_size": group_size, "dtype": str(dtype).removeprefix("torch."),
               "paths": {}}
        for name, (fn, nbytes) in paths.items():
            if fn is None:
                row["paths"][name] = {"error": nbytes}
                continue
            if name == "int4_lab_v2" and M > V2_MAX_M:
                row["paths"][name] = {"skipped": f"M = {M} > {V2_MAX_M}: v2 is the decode GEMV"}
                continue
            entry = check_then_time(lambda: fn(x), ref, 2e-2 if cuda else 1e-4, device, 3 if quick else 10)
            total = nbytes + x.element_size() * M * (K + N)
            entry.update(bytes=total, flop=2 * M * N * K, intensity=2 * M * N * K / total)
            if entry["ms"]:
                entry.update(gb_per_s=total / entry["ms"] / 1e6, tflop_per_s=2 * M * N * K / entry["ms"] / 1e9)
            row["paths"][name] = entry
        rows.append(row)
    return rows


def bench_int8(device: torch.device, quick: bool = False, progress: bool = True, *, size: int | None = None,
               batches: Sequence[int] | None = None) -> list[dict]:
    """One row per batch M: (M, K) int8 × (K, N) int8 with per-row scales (N = K = ``size``), per path.

    Defaults as `bench_int4`. ``torch._int_mm`` runs only for M > 16 (its own limit).
    """
    cuda = device.type == "cuda"
    N = K = size or weight_size(device, quick)
    seed_everything(0)
    b_q, b_scale = quantize_rows_symmetric(torch.randn(N, K, device=device))
    w_dense = (b_q.float() * b_scale[:, None]).to(torch.bfloat16 if cuda else torch.float32)
    rows = []
    for M in tqdm(batches or (QUICK_BATCHES if quick else BATCHES), desc="int8 matmul", disable=not progress):
        a_q, a_scale = quantize_rows_symmetric(torch.randn(M, K, device=device))
        x = (a_q.float() * a_scale[:, None]).to(w_dense.dtype)
        ref = (a_q.double() @ b_q.double().T) * a_scale.double()[:, None] * b_scale.double()[None, :]
        paths = {"bf16_matmul" if cuda else "fp32_matmul": lambda: x @ w_dense.T,
                 "int8_lab": lambda: int8_matmul(a_q, b_q, a_scale, b_scale, w_dense.dtype)}
        if cuda and M > 16:  # torch._int_mm needs M > 16
            paths["int_mm_then_scale"] = lambda: (torch._int_mm(a_q, b_q.T).float() * a_scale[:, None]
                                                  * b_scale[None, :]).to(torch.bfloat16)
        row = {"M": M, "N": N, "K": K, "paths": {}}
        for name, fn in paths.items():
            entry = check_then_time(fn, ref, 2e-2 if cuda else 1e-4, device, 3 if quick else 10)
            if entry["ms"]:
                entry["tflop_per_s"] = 2 * M * N * K / entry["ms"] / 1e9
            row["paths"][name] = entry
        if cuda:   # the tile the tuning set gave this shape (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages)
            row["int8_block"] = list(tuned_block(a_q, b_q, a_scale, b_scale, w_dense.dtype))
        rows.append(row)
    return rows


@torch.no_grad()
def bench_decode(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """Tokens/s of a one-token forward (batch 1, no KV cache: T = 1) of the book's model per format."""
    from lab.models import load_pretrained_lm

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    base = load_pretrained_lm("lab").to(device)
    ids = torch.zeros(1, 1, dtype=torch.int64, device=device)
    models = {"bf16" if device.type == "cuda" else "fp32": base.to(dtype)}
    models["w8a8"] = w8a8_quantize_model(copy.deepcopy(base))
    int4 = copy.deepcopy(base).float()
    report = quantize_model(int4, "rtn", 4, group_size=DECODE_GROUP_SIZE, progress=False)
    models["int4_weight_only"] = int4_model(int4, report, scale_dtype=dtype).to(dtype)
    out = {}
    for name, model in tqdm(models.items(), desc="decode", disable=not progress):
        ms = time_ms(lambda: model(ids), device, 5 if quick else 50)
        out[name] = {"ms_per_token": ms, "tokens_per_s": 1e3 / ms}
    return out


def kernel_shapes() -> list[MatmulShapes]:
    """The int4 / int8 matmuls this suite runs on a GPU, for the ahead-of-time compile (`lab.kernels.aot.shapes`):
    the sweep at N = K = 8192 and the one-token decode of the book's model (its decoder linears at M = 1)."""
    size = weight_size(torch.device("cuda"), quick=False)
    return [MatmulShapes("quant bench matmul", ("int4", "int8", "dense"), BATCHES, ((size, size),), GROUP_SIZE),
            MatmulShapes("quant bench decode (book model)", ("int4", "int8", "fp4"), (1,),
                         decoder_linear_shapes(book_config()),
                         DECODE_GROUP_SIZE)]


def run(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """Suite ``quant``: the int4 and int8 matmul sweeps and the decode speed per format."""
    label = ("CUDA: bf16 cuBLAS vs the Triton int4/int8 kernels vs PyTorch's int4/int8 ops" if device.type == "cuda"
             else "CPU: PyTorch paths only, 512 x 512 fp32 (the Triton kernels need CUDA)")
    return {"label": label, "int4": bench_int4(device, quick, progress),
            "int8": bench_int8(device, quick, progress),
            "decode": bench_decode(device, quick, progress)}
