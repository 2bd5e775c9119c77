"""The paged decode-attention kernel alone, against the copy ceiling (the GPU run's ``kernels`` stage).

`lab.kernels.paged_attention` reads, for each sequence and kv head, the K and V of every cached
position once, block by block: a memory-bound kernel (≈ 2 FLOPs per byte), so its ceiling is the
device's copy bandwidth. `bench_paged_decode` builds full caches of ``context`` positions in blocks
scattered over the pool (as an allocator leaves them), checks the output against a float64
reference, times it (`lab.bench.timing`), and reports bytes read per second and their fraction of a
measured copy bandwidth (`lab.infer.bench.measure_ceilings`: bytes read + written per second).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from lab.bench.timing import check_then_time
from lab.runtime import seed_everything


def _paged_reference(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, tables: torch.Tensor,
                     context: int) -> torch.Tensor:
    """softmax(q Kᵀ / √D) V in float64 over the first ``context`` positions of each row's blocks; (B, H, D)."""
    B, H, D = q.shape
    H_kv = k_pool.shape[2]
    k = k_pool[tables.long()].flatten(1, 2)[:, :context].double()     # (B, S, H_kv, D)
    v = v_pool[tables.long()].flatten(1, 2)[:, :context].double()
    q = q.double().view(B, H_kv, H // H_kv, D)                          # query head h = j·G + g reads kv head j
    p = (torch.einsum("bjgd,bsjd->bjgs", q, k) / math.sqrt(D)).softmax(-1)
    return torch.einsum("bjgs,bsjd->bjgd", p, v).reshape(B, H, D)


def bench_paged_decode(device: torch.device, quick: bool = False, progress: bool = True, *,
                       heads: Sequence[tuple[int, int]] = ((32, 8), (32, 32)), head_dim: int = 128,
                       batches: Sequence[int] = (1, 8, 32), context: int = 2048, block_size: int = 16,
                       bandwidth: float | None = None) -> list[dict]:
    """Decode attention over a paged cache, one row per (H, H_kv, B) and kernel version: v1
    (`lab.kernels.paged_attention`) and v2 (`lab.kernels.paged_attention_v2`, flash-decoding) on a GPU,
    the PyTorch path on the CPU; each checked against float64, then timed.

    Every row has ``context`` cached positions in blocks of ``block_size`` (`PagedKVCache`'s default),
    scattered over the pool in a random order as a real allocator leaves them. ``kv_bytes`` = K and V
    read, 2·B·H_kv·D·b_e·⌈context / block_size⌉·block_size; ``bytes`` adds q and o; with the copy
    ``bandwidth`` (bytes/s, read + write, `measure_ceilings`) each row gets bytes/s over it.
    """
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    from lab.kernels.paged_attention import paged_attention_decode
    from lab.kernels.paged_attention_v2 import paged_attention_decode_v2

    versions = {"v1": paged_attention_decode, "v2": paged_attention_decode_v2}

    rows = []
    bar = tqdm(total=len(heads) * len(batches), desc="paged decode attention", disable=not progress)
    for H, H_kv in heads:
        for B in batches:
            seed_everything(0)
            per_row = -(-context // block_size)
            num_blocks = B * per_row
            q = torch.randn(B, H, head_dim, device=device, dtype=dtype)
            k_pool = torch.randn(num_blocks, block_size, H_kv, head_dim, device=device, dtype=dtype)
            v_pool = torch.randn_like(k_pool)
            tables = torch.randperm(num_blocks, device=device).view(B, per_row).to(torch.int32)
            lengths = torch.full((B,), context, dtype=torch.int32, device=device)
            ref = _paged_reference(q, k_pool, v_pool, tables, context)
            elem = k_pool.element_size()
            kv_bytes = 2 * B * H_kv * head_dim * elem * per_row * block_size
            for version, decode in versions.items():
                entry = check_then_time(lambda: decode(q, k_pool, v_pool, tables, lengths, check_lengths=False),
                                        ref, 2e-2 if cuda else 1e-4, device, 3 if quick else 10)
                row = {"version": version, "H": H, "H_kv": H_kv, "D": head_dim, "B": B, "context": context,
                       "block_size": block_size, "dtype": str(dtype).removeprefix("torch."),
                       "path": "triton" if cuda else "torch", "kv_bytes": kv_bytes,
                       "bytes": kv_bytes + 2 * B * H * head_dim * elem, **entry}
                if entry["ms"]:
                    row["gb_per_s"] = row["bytes"] / entry["ms"] / 1e6
                    if bandwidth:
                        row["fraction_of_copy_bandwidth"] = row["bytes"] / (entry["ms"] * 1e-3) / bandwidth
                rows.append(row)
            bar.update()
            del q, k_pool, v_pool, ref
    bar.close()
    return rows
