"""Chapter 5's context-parallel measurements: the function the spawned ranks run (picklable: it lives here) and the
rows the notebook prints, beside `lab.parallel.experiments` (the other strategies')."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from lab.parallel.comm import CommCounter
from lab.parallel.context_parallel import (LAYOUTS, allgather_attention, ring_attention, ring_attention_work,
                                           sequence_positions)
from lab.parallel.formulas import CP_METHODS, context_parallel_elements

METHODS = dict(zip(CP_METHODS, (ring_attention, allgather_attention)))


def _full_attention(q, k, v, w) -> list[torch.Tensor]:
    """Causal attention of the whole sequence (key/value heads repeated) and the q, k, v gradients of Σ w ⊙ out."""
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    g = q.shape[1] // k.shape[1]
    out = F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), is_causal=True)
    (out * w).sum().backward()
    return [out.detach(), q.grad, k.grad, v.grad]


def context_parallel_check(batch: int, n_head: int, n_kv_head: int, seq_len: int, head_dim: int, seed: int = 0) -> dict:
    """Each method and layout on this rank's part of one random float64 q, k, v, against full causal attention:
    {(method, layout): {"max_abs_err": over the output and the q, k, v gradients, "sent_forward",
    "sent_backward": elements this rank sent (ring formula, `lab.parallel.comm`)}}."""
    n, rank = dist.get_world_size(), dist.get_rank()
    gen = torch.Generator().manual_seed(seed)
    q, k, v, w = (torch.randn(batch, h, seq_len, head_dim, generator=gen, dtype=torch.float64)
                  for h in (n_head, n_kv_head, n_kv_head, n_head))
    full, out = _full_attention(q, k, v, w), {}
    for method, attend in METHODS.items():
        for layout in LAYOUTS:
            pos = sequence_positions(seq_len, n, rank, layout)
            local = [t[:, :, pos].clone().requires_grad_() for t in (q, k, v)]
            with CommCounter() as forward:
                o = attend(*local, layout=layout)
            with CommCounter() as backward:
                (o * w[:, :, pos]).sum().backward()
            mine = [o.detach()] + [t.grad for t in local]
            out[(method, layout)] = {"max_abs_err": max((a - b[:, :, pos]).abs().max().item() for a, b in zip(mine, full)),
                                     "sent_forward": forward.sent_bytes / 8, "sent_backward": backward.sent_bytes / 8}
    return out


def context_parallel_rows(per_rank: list[dict], batch: int, seq_len: int, kv_width: int) -> list[dict]:
    """One row per method and layout: the largest error over the ranks, the elements each rank sent against
    `context_parallel_elements` (the same on every rank), and the K/V elements it keeps for backward."""
    n, rows = len(per_rank), []
    for (method, layout), first in per_rank[0].items():
        formula = context_parallel_elements(batch, seq_len, kv_width, n, method)
        sent = {(r[(method, layout)]["sent_forward"], r[(method, layout)]["sent_backward"]) for r in per_rank}
        rows.append({"method": method, "layout": layout,
                     "max |error|": max(r[(method, layout)]["max_abs_err"] for r in per_rank),
                     "sent forward": first["sent_forward"], "formula forward": formula["forward"],
                     "sent backward": first["sent_backward"], "formula backward": formula["backward"],
                     "same on every rank": len(sent) == 1, "K/V kept (formula)": formula["saved"]})
    return rows


def causal_work_rows(seq_len: int, n: int) -> list[dict]:
    """Per layout: the scores each rank computes (`ring_attention_work`), and the lock-step time Σ_s max_r work[r][s]
    (every rank waits for the slowest at each step) over the balanced time Σ work / N."""
    rows = []
    for layout in LAYOUTS:
        work = ring_attention_work(seq_len, n, layout)
        total = sum(map(sum, work))
        lockstep = sum(max(work[r][s] for r in range(n)) for s in range(n))
        rows.append({"layout": layout, **{f"rank {r}": sum(work[r]) for r in range(n)},
                     "lock-step / balanced": lockstep * n / total})
    return rows
