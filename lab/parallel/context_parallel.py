"""Context parallelism: the sequence split over N ranks, attention by a ring of key/value blocks.

Rank r of N holds T/N positions of q (B, H, T/N, D) and of k, v (B, H_kv, T/N, D) (H_kv divides H:
query head h reads key/value head h // (H/H_kv), as in `lab.models.gpt`). Every other layer is
position-wise, so only attention needs the other ranks' positions, and only their keys and values.

**Online softmax** (Milakov and Gimelshein 2018; FlashAttention's rescaling). Attention of a query row over
the key blocks j = 0, 1, … is a merge of per-block results: with s = q kᵀ/√D restricted to block j,

    ℓ_j = log Σ_{k in j} exp(s_k),   o_j = Σ_{k in j} exp(s_k − ℓ_j) v_k        (the block's own softmax)
    ℓ ← log(exp ℓ + exp ℓ_j),         o ← exp(ℓ_old − ℓ) o + exp(ℓ_j − ℓ) o_j

exact in any order, so the result equals softmax(s) v over all keys. ℓ, the row's log-sum-exp, is kept.

**The ring** (Liu et al. 2023, Ring Attention). At step s = 0 … N−1 rank r holds the key/value block of
rank (r − s) mod N: it starts sending that block to rank r+1 and receiving the next from rank r−1, merges
the block it holds while they travel, then swaps. After N−1 hops each block has visited every rank. Causal:
a pair of chunks (query chunk a, key chunk b) is skipped when b > a, computed whole when b < a and with the
triangular mask when a = b. Backward (FlashAttention's): with P = exp(s − ℓ) and Δ = rowsum(dO ⊙ O),

    dV_j += Pᵀ dO,   dS = P ⊙ (dO V_jᵀ − Δ),   dQ += dS K_j /√D,   dK_j += dSᵀ Q /√D.

The blocks circulate again; dK_j, dV_j travel with them as an accumulator that starts on rank j+1, gains one
term per rank and reaches rank j after N−1 hops, where rank j's own term is added. Bytes each rank sends per
layer: (N−1)·|KV| forward, 2(N−1)·|KV| backward (|KV| = 2·B·H_kv·(T/N)·D elements, one rank's K and V).

`allgather_attention` is the other way (Llama 3's): all-gather K and V (the same (N−1)·|KV| sent forward),
attend, and reduce-scatter dK, dV backward ((N−1)·|KV|): a third fewer bytes, but every rank keeps all
N·|KV| of K and V for backward where the ring keeps its own |KV| (`lab.parallel.formulas.context_parallel_elements`).

**Layouts** (``layout``). ``"contiguous"``: rank r holds chunk r of N, positions r·T/N … (r+1)·T/N − 1.
Under the causal mask rank r needs r + ½ blocks of work and rank 0 only ½: the ring runs in lock step, so
the step takes as long as rank N−1's N − ½ blocks while the average is N/2. ``"zigzag"``: the sequence in
2N chunks, rank r holding chunks r and 2N−1−r; every rank then computes the same two chunk pairs at every
step (`ring_attention_work`), and its positions follow from `sequence_positions`.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lab.core.checks import check_choice, check_group, check_int, check_tensor
from lab.models.gpt import GPT, check_gpt, rope_cos_sin_at
from lab.parallel import comm

LAYOUTS = ("contiguous", "zigzag")
KV_TAG, GRAD_TAG = 0, 1           # blocks and gradient accumulators cross the same link: one tag each


def _chunks(n: int, rank: int, layout: str) -> list[int]:
    """The chunks rank ``rank`` holds, in its local order: [r] of N (contiguous), [r, 2N−1−r] of 2N (zigzag)."""
    return [rank] if layout == "contiguous" else [rank, 2 * n - 1 - rank]


def _check_layout(seq_len: int, n: int, layout: str, what: str = "") -> int:
    """The chunk length T/(c·N), c = 1 (contiguous) or 2 (zigzag) chunks per rank; ``what`` names T."""
    check_choice("layout", layout, LAYOUTS)
    pieces = n * (1 if layout == "contiguous" else 2)
    if seq_len % pieces:
        raise ValueError(f"{what or f'seq_len={seq_len}'} must be divisible by {pieces} for layout={layout!r} "
                         f"with N={n} ranks")
    return seq_len // pieces


def sequence_positions(seq_len: int, n: int, rank: int, layout: str = "contiguous") -> torch.Tensor:
    """The positions of a sequence of T = ``seq_len`` that rank ``rank`` of N = ``n`` holds (int64, T/N of them,
    in local order): x[:, sequence_positions(T, N, r)] is rank r's part of a (B, T, …) batch."""
    check_int("seq_len", seq_len)
    check_int("n", n)
    check_int("rank", rank, 0, n - 1)
    size = _check_layout(seq_len, n, layout)
    return torch.cat([torch.arange(a * size, (a + 1) * size) for a in _chunks(n, rank, layout)])


def _pairs(q_chunks: list[int], kv_chunks: list[int]):
    """(local query chunk i, local key chunk j, diagonal) for every pair the causal mask does not hide."""
    return [(i, j, a == b) for i, a in enumerate(q_chunks) for j, b in enumerate(kv_chunks) if b <= a]


def ring_attention_work(seq_len: int, n: int, layout: str = "contiguous") -> list[list[int]]:
    """Scores q·k each rank computes at each ring step, per sequence and head: work[r][s] (the pairs
    `ring_attention` computes; a diagonal chunk pair of length L counts its L(L+1)/2 unmasked scores)."""
    check_int("seq_len", seq_len)
    check_int("n", n)
    size = _check_layout(seq_len, n, layout)
    cost = {True: size * (size + 1) // 2, False: size * size}
    return [[sum(cost[d] for _, _, d in _pairs(_chunks(n, r, layout), _chunks(n, (r - s) % n, layout)))
             for s in range(n)] for r in range(n)]


def _ring(group) -> tuple[int, int, int, int]:
    """N, this rank, and the global ranks of the next and the previous rank on the ring."""
    n, r = dist.get_world_size(group), dist.get_rank(group)
    peer = (lambda i: dist.get_global_rank(group, i)) if group is not None else (lambda i: i)
    return n, r, peer((r + 1) % n), peer((r - 1) % n)


def _expand(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(…, H_kv, L, D) → (…, H, L, D): each key/value head repeated for its H/H_kv query heads."""
    return t.repeat_interleave(heads // t.shape[-3], dim=-3)


def _fold(t: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """The adjoint of `_expand`: (…, H, L, D) → (…, H_kv, L, D), summing each key/value head's query heads."""
    *lead, H, L, D = t.shape
    return t.view(*lead, kv_heads, H // kv_heads, L, D).sum(-3)


def _scores(q: torch.Tensor, k: torch.Tensor, diagonal: bool) -> torch.Tensor:
    """s = q kᵀ/√D for one chunk pair, −inf above the diagonal of a diagonal pair."""
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    if diagonal:
        s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))
    return s


def _merge_block(q, kv, chunks: tuple[list[int], list[int]], out, lse) -> None:
    """Fold one key/value block into this rank's running (o, ℓ), chunk pair by chunk pair (in place)."""
    k, v = _expand(kv[0], q.shape[1]), _expand(kv[1], q.shape[1])
    size = q.shape[2] // len(chunks[0])
    for i, j, diagonal in _pairs(*chunks):
        rows, cols = slice(i * size, (i + 1) * size), slice(j * size, (j + 1) * size)
        s = _scores(q[:, :, rows], k[:, :, cols], diagonal)
        lse_j = torch.logsumexp(s, -1, keepdim=True)
        o_j = torch.exp(s - lse_j) @ v[:, :, cols]
        new = torch.logaddexp(lse[:, :, rows], lse_j)
        out[:, :, rows] = out[:, :, rows] * torch.exp(lse[:, :, rows] - new) + o_j * torch.exp(lse_j - new)
        lse[:, :, rows] = new


def _block_grads(q, kv, chunks, dout, delta, lse, dq) -> torch.Tensor:
    """This rank's terms of dK, dV (2, B, H_kv, L, D) for one block; its dQ terms are added to ``dq``."""
    k, v = _expand(kv[0], q.shape[1]), _expand(kv[1], q.shape[1])
    dk, dv = torch.zeros_like(k), torch.zeros_like(v)
    size = q.shape[2] // len(chunks[0])
    scale = q.shape[-1] ** -0.5
    for i, j, diagonal in _pairs(*chunks):
        rows, cols = slice(i * size, (i + 1) * size), slice(j * size, (j + 1) * size)
        p = torch.exp(_scores(q[:, :, rows], k[:, :, cols], diagonal) - lse[:, :, rows])
        dv[:, :, cols] += p.transpose(-1, -2) @ dout[:, :, rows]
        ds = p * (dout[:, :, rows] @ v[:, :, cols].transpose(-1, -2) - delta[:, :, rows])
        dq[:, :, rows] += ds @ k[:, :, cols] * scale
        dk[:, :, cols] += ds.transpose(-1, -2) @ q[:, :, rows] * scale
    return torch.stack([_fold(dk, kv.shape[2]), _fold(dv, kv.shape[2])])


def _pass_on(t: torch.Tensor, ring: tuple, group, tag: int):
    """Start sending ``t`` to the next rank and receiving the previous rank's into a new buffer."""
    incoming = torch.empty_like(t)
    _, _, nxt, prv = ring
    return incoming, [comm.isend(t, nxt, group, tag), comm.irecv(incoming, prv, group, tag)]


def _arrived(incoming: torch.Tensor, works: list) -> torch.Tensor:
    for work in works:
        work.wait()
    return incoming


class _RingAttention(torch.autograd.Function):
    """Forward: the ring with the online softmax. Backward: the ring again, dK/dV riding along to their owner."""

    @staticmethod
    def forward(ctx, q, k, v, group, layout):
        ring = n, rank, _, _ = _ring(group)
        kv, out = torch.stack([k, v]), torch.zeros_like(q)
        lse = torch.full((*q.shape[:-1], 1), float("-inf"), dtype=q.dtype, device=q.device)
        for step in range(n):
            sending = _pass_on(kv, ring, group, KV_TAG) if step < n - 1 else None
            _merge_block(q, kv, (_chunks(n, rank, layout), _chunks(n, (rank - step) % n, layout)), out, lse)
            kv = _arrived(*sending) if sending else kv
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.group, ctx.layout = group, layout
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        ring = n, rank, nxt, prv = _ring(ctx.group)
        kv, dq, dout = torch.stack([k, v]), torch.zeros_like(q), dout.contiguous()
        delta = (dout * out).sum(-1, keepdim=True)                      # Δ = rowsum(dO ⊙ O)
        sent = []                                                       # accumulators in flight: keep them alive
        for step in range(n):
            sending = _pass_on(kv, ring, ctx.group, KV_TAG) if step < n - 1 else None
            chunks = (_chunks(n, rank, ctx.layout), _chunks(n, (rank - step) % n, ctx.layout))
            grads = _block_grads(q, kv, chunks, dout, delta, lse, dq)
            if step == 0:
                own = grads                                             # this rank's term of its own dK, dV
            else:
                if step > 1:                                            # the terms of ranks j+1 … r−1
                    incoming = torch.empty_like(grads)
                    comm.recv(incoming, prv, ctx.group, GRAD_TAG)
                    grads = grads + incoming
                sent.append((comm.isend(grads, nxt, ctx.group, GRAD_TAG), grads))
            kv = _arrived(*sending) if sending else kv
        if n > 1:                                                       # every other rank's terms, home at last
            home = torch.empty_like(own)
            comm.recv(home, prv, ctx.group, GRAD_TAG)
            own = own + home
        for work, _ in sent:
            work.wait()
        return dq, own[0], own[1], None, None


class _GatherKV(torch.autograd.Function):
    """All-gather of every rank's K and V forward (N, 2, B, H_kv, T/N, D); reduce-scatter of their gradient."""

    @staticmethod
    def forward(ctx, kv, group):
        ctx.group = group
        gathered = kv.new_empty((dist.get_world_size(group), *kv.shape))
        comm.all_gather(gathered.view(-1), kv.contiguous().view(-1), group)
        return gathered

    @staticmethod
    def backward(ctx, grad):
        mine = grad.new_empty(grad.shape[1:])
        comm.reduce_scatter(mine.view(-1), grad.contiguous().view(-1), ctx.group)
        return mine, None


def _check_qkv(q, k, v, group, layout: str) -> int:
    """q (B, H, T/N, D) and k, v (B, H_kv, T/N, D) of one floating dtype, H_kv dividing H; returns N."""
    check_group("group", group)
    check_choice("layout", layout, LAYOUTS)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not check_tensor(name, t, 4).is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    (B, H, T, D), (B_kv, H_kv, T_kv, D_kv) = q.shape, k.shape
    if v.shape != k.shape or (B_kv, T_kv, D_kv) != (B, T, D) or H % H_kv:
        raise ValueError(f"q must be (B, H, T/N, D) and k, v (B, H_kv, T/N, D) with H_kv dividing H, got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    n = dist.get_world_size(group)
    _check_layout(T * n, n, layout, f"the sequence length N·(T/N) = {n}·{T}")
    return n


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group=None,
                   layout: str = "contiguous") -> torch.Tensor:
    """Causal attention softmax(q kᵀ/√D + mask) v over the whole sequence, of this rank's queries (B, H, T/N, D).

    q (B, H, T/N, D), k and v (B, H_kv, T/N, D): this rank's positions (`sequence_positions` of ``layout``) of
    the N ranks of ``group``. Keys and values travel around the ring (module docstring); backward sends them
    around again with the gradients of k and v. 16-bit inputs are computed and sent in float32.
    """
    _check_qkv(q, k, v, group, layout)
    work = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    with torch.autocast(q.device.type, enabled=False):
        out = _RingAttention.apply(q.to(work), k.to(work), v.to(work), group, layout)
    return out.to(q.dtype)


def allgather_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group=None,
                        layout: str = "contiguous") -> torch.Tensor:
    """`ring_attention`'s result by all-gathering every rank's K and V first (backward: reduce-scatter of
    their gradients); the mask compares positions, so the gathered keys need no reordering."""
    n = _check_qkv(q, k, v, group, layout)
    B, H, T_local, D = q.shape
    T = n * T_local
    kv = _GatherKV.apply(torch.stack([k, v]), group)                   # (N, 2, B, H_kv, T/N, D)
    k_all, v_all = (_expand(kv[:, i].permute(1, 2, 0, 3, 4).reshape(B, k.shape[1], T, D), H) for i in (0, 1))
    k_pos = torch.cat([sequence_positions(T, n, j, layout) for j in range(n)]).to(q.device)
    q_pos = sequence_positions(T, n, dist.get_rank(group), layout).to(q.device)
    return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=q_pos[:, None] >= k_pos[None, :])


class ContextParallelGPT(nn.Module):
    """A lab GPT on this rank's part of each sequence: ids (B, T/N) at `sequence_positions` → logits (B, T/N, V).

    The layers are the model's own (its parameters under ``model.``); rotary embeddings take the rank's
    positions and attention is `ring_attention`. Parameters are replicated: wrapped in `DataParallel` over the
    same group, the averaged gradients are those of the mean loss over all B·T tokens.
    """

    def __init__(self, model: GPT, layout: str, group) -> None:
        super().__init__()
        self.model, self.layout, self.group = model, layout, group

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        check_tensor("idx", idx, 2, (torch.int64, torch.int32))
        n, cfg = dist.get_world_size(self.group), self.model.config
        T = idx.shape[1] * n
        if T > cfg.context_length:
            raise ValueError(f"idx holds {idx.shape[1]} positions per rank, N·(T/N) = {n}·{idx.shape[1]} in all, "
                             f"which exceeds context_length={cfg.context_length}")
        _check_layout(T, n, self.layout, f"the sequence length N·(T/N) = {n}·{idx.shape[1]}")
        positions = sequence_positions(T, n, dist.get_rank(self.group), self.layout).to(idx.device)
        cos, sin = rope_cos_sin_at(positions, cfg.head_dim, cfg.rope_theta)
        x = self.model.embed_tokens(idx)
        for block in self.model.layers:
            q, k, v = block.attn.project(block.attn_norm(x), cos, sin)
            y = ring_attention(q, k, v, self.group, self.layout)
            x = x + block.attn.o_proj(y.transpose(1, 2).reshape(*x.shape[:2], -1))
            x = x + block.mlp(block.mlp_norm(x))
        return self.model.lm_head(self.model.norm(x))


def context_parallel_gpt(model: GPT, layout: str = "zigzag", group=None) -> ContextParallelGPT:
    """A copy of ``model`` that runs on this rank's positions of every sequence (`ContextParallelGPT`)."""
    check_gpt("model", model)
    check_choice("layout", layout, LAYOUTS)
    return ContextParallelGPT(copy.deepcopy(model), layout, check_group("group", group))
