"""Speculative decoding of B rows at once, and what the batch does to its speed-up.

Each of the B rows runs the step of `lab.infer.speculative` (Leviathan et al. 2023; Chen et al. 2023) on its
own committed tokens x^b_1 … x^b_{n_b}: the draft proposes d^b_1 … d^b_k in k batched forwards, the target
scores (x^b_{n_b}, d^b_1, …, d^b_k) of every row in one forward over B × (k+1) tokens, and
`speculative_accept` keeps a_b of row b's draft tokens and draws the next. Rows accept different numbers of
tokens, so after the first step they sit at different positions (the ragged batch of Qian et al. 2024, BASS):
each row writes its keys and values at its own positions of a `StaticKVCache` (``scatter_`` per row) and
the causal mask hides every slot past them, so a row's rejected slots are simply overwritten by its next
step. Per row and step the draft is fed its row's last two committed tokens, at positions n_b − 2 and
n_b − 1 (the first is often cached already and rewritten with the same token at the same place): one
fixed width for every row whatever it accepted. Prompts of different lengths are right-padded for one
prefill at positions 0 … T₀,max − 1 of every row; a row's padding slots lie past its own tokens and are
overwritten before anything reads them. A row that has its ``max_new_tokens`` rides along in the fixed-shape
batch until the last row is done (as in static batching), so every row needs k positions of room past
T₀,max + n. Each row's output is distributed as plain sampling from the target (greedy: equal to
`lab.infer.generate` of that row alone), by the argument of `lab.infer.speculative`, which holds row by row.

A batch of B rows with acceptance rate α emits E = (1 − α^{k+1}) / (1 − α) tokens per row and target pass
(`expected_tokens_per_step`) when its rows progress independently (as under continuous batching; a static
batch such as this one waits for its slowest row, which lowers E as B grows), and a pass costs k draft steps
and one target pass over k + 1 tokens per row:

    S(B) = E / (c(B)·k + r(B)),   c(B) = t_draft(B) / t_target(B),   r(B) = t_verify(B) / t_target(B),

with t(B) the time of a step of B rows, one token each, and t_verify(B) the target's pass over B × (k+1)
tokens. While the verify pass is memory bound it reads what a plain step reads, r = 1, and S = E / (ck + 1).
`predicted_batch_speedup` prices the three steps on the roofline (`lab.infer.roofline`): bytes Ψ_b + B·m
and FLOPs B·f per token, with Ψ_b = σΨ the weight bytes, m the KV-cache bytes and f the FLOPs of one row and
token at context S (f = 2N + 4·L·n_h·D·S, N = `matmul_params`), and R = peak / bandwidth the ridge point
(FLOP/byte). With the plain step memory bound,

    r(B) = max(1, (k+1)·f·B / (R·(Ψ_b + B·m))),

so the verify pass is compute bound from B_v = Ψ_b / ((k+1)·f / R − m) rows on, and never if m ≥ (k+1)·f / R.
Past B_v, r rises with B and levels off at (k+1)·f / (R·m), and S falls below 1 (`crossover_batch`) at

    B× = (E·Ψ_b − k·Ψ_b,d) / ((k+1)·f / R − (E·m − k·m_d))      (`crossover_formula`, `crossover_batch`)

while the plain and draft steps are still memory bound (subscript d: the draft). At short contexts,
B× ≈ R·(E − k·c)/(k + 1) (with 2 bytes per bf16 weight and 2 FLOPs per weight and token, Ψ_b ≈ f); a longer
cache adds bytes that the verify pass reads once for k + 1 tokens, so B× grows, and once E·m − k·m_d ≥
(k+1)·f/R, B× vanishes: r levels off below what the E tokens of a pass pay for, S ≥ 1 at every batch and
speculation keeps paying at any batch (Sadhukhan et al. 2024, MagicDec), though the verify pass may still
be compute bound (that needs m < (k+1)·f/R).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lab.core.checks import check_fraction, check_int, check_list
from lab.core.stats import compare_sums
from lab.infer.generate import check_prompt, check_seed
from lab.infer.kv_cache import StaticKVCache, forward_cached
from lab.infer.roofline import _ceilings, decode_step_cost, speed_of_light_ms, weight_bytes
from lab.infer.sampling import check_sampling, next_token_probs, sample_from
from lab.infer.speculative import (SpeculativeResult, check_draft_length, expected_speedup, expected_tokens_per_step,
                                   speculative_accept)
from lab.models.gpt import GPT, check_gpt


def _check_batch(target: GPT, draft: GPT, prompt_ids, max_new_tokens: int, k: int) -> list[torch.Tensor]:
    """The prompts as a list of 1-D int64 rows, after checking both models, the prompts and the room they need."""
    check_gpt("target", target)
    check_gpt("draft", draft)
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"draft and target must share the vocabulary, got draft vocab_size="
                         f"{draft.config.vocab_size} and target vocab_size={target.config.vocab_size}")
    check_draft_length(k)
    if torch.is_tensor(prompt_ids):
        rows = list(check_prompt(target, prompt_ids, max_new_tokens))
    else:
        rows = check_list("prompt_ids", prompt_ids)
        for i, row in enumerate(rows):
            if torch.is_tensor(row) and row.dim() != 1:
                raise ValueError(f"prompt_ids[{i}] must be one sequence (T,), got shape {tuple(row.shape)}")
            check_prompt(target, row, max_new_tokens)
    longest = max(len(row) for row in rows)
    room = longest + max_new_tokens + k
    for model, name in ((target, "target"), (draft, "draft")):
        check_prompt(model, rows[0], max_new_tokens)                 # the draft's device and vocabulary
        if room > model.config.context_length:
            raise ValueError(f"the longest prompt ({longest} tokens) + max_new_tokens={max_new_tokens} + k={k} = "
                             f"{room} positions exceed the {name}'s context_length={model.config.context_length} "
                             "(a finished row rides along in the batch, k positions past its end)")
    return rows


def _forward(model: GPT, cache: StaticKVCache, ids: torch.Tensor, positions: torch.Tensor,
             n_keys: int) -> torch.Tensor:
    """Logits (B, T, V) of ids (B, T) at per-row positions (B, T), through ``cache`` (first n_keys slots)."""
    return forward_cached(model, ids, positions, cache.attention(positions, n_keys))


def _prefill(target: GPT, draft: GPT, rows: list[torch.Tensor], extra: int) -> tuple[list, torch.Tensor]:
    """Both caches, sized for the longest prompt + ``extra``, filled with the right-padded prompts; and the
    draft's logits (B, V) at each row's last prompt token (its first draft distribution)."""
    T0 = torch.tensor([len(row) for row in rows])
    width = int(T0.max())
    ids = torch.zeros(len(rows), width, dtype=torch.int64, device=rows[0].device)
    for b, row in enumerate(rows):
        ids[b, :len(row)] = row
    positions = torch.arange(width, device=ids.device).expand(len(rows), width)
    caches = [StaticKVCache(model, len(rows), width + extra) for model in (target, draft)]
    _forward(target, caches[0], ids, positions, width)
    z = _forward(draft, caches[1], ids, positions, width)
    return caches, z[torch.arange(len(rows)), T0.to(ids.device) - 1]


def _draft(draft: GPT, cache: StaticKVCache, tokens: list[list[int]], k: int, z: torch.Tensor | None, probs,
           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Draft tokens (B, k) and the distributions q (B, k, V) they were drawn from. ``z``: the draft's logits after
    the committed tokens (from the prefill), or None: feed each row's last two committed tokens first."""
    device = cache.k[0].device
    n = torch.tensor([len(row) for row in tokens], device=device)
    n_keys = max(len(row) for row in tokens) + k
    if z is None:
        ids = torch.tensor([row[-2:] for row in tokens], device=device)
        z = _forward(draft, cache, ids, n[:, None] + torch.arange(-2, 0, device=device), n_keys)[:, -1]
    q = [probs(z)]
    d = [sample_from(q[0], generator)]
    for i in range(1, k):                                            # d_i sits at position n + i − 1
        z = _forward(draft, cache, d[-1][:, None], (n + i - 1)[:, None], n_keys)[:, -1]
        q.append(probs(z))
        d.append(sample_from(q[-1], generator))
    return torch.stack(d, 1), torch.stack(q, 1)


def _verify(target: GPT, cache: StaticKVCache, tokens: list[list[int]], proposal: torch.Tensor, probs) -> torch.Tensor:
    """The target's distributions p (B, k+1, V) over (last committed token, d_1 … d_k) of every row."""
    device = proposal.device
    k = proposal.shape[1]
    n = torch.tensor([len(row) for row in tokens], device=device)
    ids = torch.cat([torch.tensor([[row[-1]] for row in tokens], device=device), proposal], 1)
    positions = (n - 1)[:, None] + torch.arange(k + 1, device=device)
    return probs(_forward(target, cache, ids, positions, max(len(row) for row in tokens) + k))


def _accept(p: torch.Tensor, q: torch.Tensor, proposal: torch.Tensor, tokens: list[list[int]], ends: list[int],
            counts: list[tuple[list[int], list[int]]], generator: torch.Generator) -> None:
    """Each unfinished row keeps what `speculative_accept` accepts of its first d = min(k, room − 1) draft
    tokens (as `speculative_generate` drafts near the end) plus the token it draws; finished rows are skipped."""
    k = proposal.shape[1]
    for b, row in enumerate(tokens):
        room = ends[b] - len(row)
        if room == 0:
            continue
        d = min(k, room - 1)
        if d:
            a, nxt = speculative_accept(p[b, :d + 1], q[b, :d], proposal[b, :d], generator, check=False)
        else:
            a, nxt = 0, int(sample_from(p[b, :1], generator))
        row += proposal[b, :a].tolist() + [nxt]
        counts[b][0].append(a)
        counts[b][1].append(d)


@torch.no_grad()
def speculative_generate_batch(target: GPT, draft: GPT, prompt_ids, max_new_tokens: int, k: int = 4,
                               temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                               seed: int = 0) -> list[SpeculativeResult]:
    """Speculative decoding of every row of ``prompt_ids``: a (B, T₀) int64 tensor, or a list of B (T₀_b,) rows of
    any lengths. Returns one `SpeculativeResult` per row: its prompt + ``max_new_tokens`` tokens, and the
    draft tokens it accepted and drafted in each target pass while it was unfinished (the batch makes
    max over rows of ``steps`` passes). Greedy (τ = 0) rows equal `generate` of each row alone; sampled rows
    follow the target's distribution after ``temperature``, ``top_k``, ``top_p`` (module docstring), drawn with
    one ``torch.Generator`` seeded by ``seed`` for the whole batch.
    """
    rows = _check_batch(target, draft, prompt_ids, max_new_tokens, k)
    check_sampling(temperature, top_k, top_p)
    check_seed(seed)
    generator = torch.Generator(device=rows[0].device).manual_seed(seed)

    def probs(logits: torch.Tensor) -> torch.Tensor:          # the arguments are checked above, once
        return next_token_probs(logits, temperature, top_k, top_p, check=False)

    caches, z = _prefill(target, draft, rows, max_new_tokens + k)
    tokens = [row.tolist() for row in rows]
    ends = [len(row) + max_new_tokens for row in rows]
    counts = [([], []) for _ in rows]
    while any(len(row) < end for row, end in zip(tokens, ends)):
        proposal, q = _draft(draft, caches[1], tokens, k, z, probs, generator)
        p = _verify(target, caches[0], tokens, proposal, probs)
        _accept(p, q, proposal, tokens, ends, counts, generator)
        z = None
    return [SpeculativeResult(torch.tensor(row, device=rows[0].device), a, d) for row, (a, d) in zip(tokens, counts)]


def acceptance_over_rows(results: Sequence[SpeculativeResult], n_boot: int = 4000, seed: int = 0) -> dict:
    """α̂ = Σ accepted / Σ tested draft tokens and the tokens per target pass Σ (accepted + 1) / Σ passes, pooled
    over the rows, each with its 95% bootstrap-t interval over rows (`lab.core.stats.compare_sums` of the
    per-row sums, the rows as clusters; ≥ 3 rows that tested a draft token). "tested" as in
    `SpeculativeResult.acceptance_rate`. Returns {"alpha", "alpha_low", "alpha_high", "tokens_per_step",
    "tokens_per_step_low", "tokens_per_step_high", "rows", "steps"}."""
    results = check_list("results", results)
    for i, r in enumerate(results):
        if not isinstance(r, SpeculativeResult):
            raise TypeError(f"results[{i}] must be a SpeculativeResult, got {type(r).__name__}")
    tested = np.array([sum(min(a + 1, d) for a, d in zip(r.accepted, r.drafted)) for r in results])
    if (tested > 0).sum() < 3:
        raise ValueError(f"results must hold at least 3 rows that tested a draft token, got {(tested > 0).sum()}")
    has = tested > 0
    accepted = np.array([sum(r.accepted) for r in results], dtype=np.float64)
    steps = np.array([r.steps for r in results])
    alpha = compare_sums(np.zeros(has.sum()), accepted[has], tested[has], n_boot, seed)
    per_step = compare_sums(np.zeros(len(results)), accepted + steps, steps, n_boot, seed)
    return {"alpha": alpha["delta_log_ppl"], "alpha_low": alpha["ci_low"], "alpha_high": alpha["ci_high"],
            "tokens_per_step": per_step["delta_log_ppl"], "tokens_per_step_low": per_step["ci_low"],
            "tokens_per_step_high": per_step["ci_high"], "rows": len(results), "steps": int(steps.sum())}


def _check_prediction(target: GPT, draft: GPT, alpha: float, k: int, context: int, bandwidth, peak_flops) -> tuple:
    """The checks shared by the roofline predictions; returns (bandwidth, peak_flops) with None filled in."""
    check_gpt("target", target)
    check_gpt("draft", draft)
    check_fraction("alpha", alpha)
    check_draft_length(k)
    check_int("context", context)
    return _ceilings(bandwidth, peak_flops)


def predicted_batch_speedup(target: GPT, draft: GPT, alpha: float, k: int, batch: int, context: int,
                            bandwidth: float | None = None, peak_flops: float | None = None) -> dict:
    """S(B) on the roofline for ``batch`` rows at ``context`` cached positions each (module docstring): a plain
    step, a draft step (`decode_step_cost`) and the verify pass, which reads what a plain step reads and computes
    k + 1 tokens per row, each max(bytes / bandwidth, FLOPs / peak) (`speed_of_light_ms`; None: the H100
    ceilings of `lab.core.ceilings.device_ceilings`). Predicted, not measured. Returns {"speedup", "c", "r",
    "tokens_per_step", "plain_ms", "draft_ms", "verify_ms", "verify_memory_bound", "plain_memory_bound"}."""
    bandwidth, peak_flops = _check_prediction(target, draft, alpha, k, context, bandwidth, peak_flops)
    check_int("batch", batch)
    plain = speed_of_light_ms(decode_step_cost(target, batch, context), bandwidth, peak_flops)
    drafted = speed_of_light_ms(decode_step_cost(draft, batch, context), bandwidth, peak_flops)
    verify_cost = {"bytes": decode_step_cost(target, batch, context)["bytes"],
                   "flops": decode_step_cost(target, batch * (k + 1), context)["flops"]}
    verify = speed_of_light_ms(verify_cost, bandwidth, peak_flops)
    c, r = drafted["ms"] / plain["ms"], verify["ms"] / plain["ms"]
    return {"speedup": expected_speedup(alpha, k, c, r), "c": c, "r": r,
            "tokens_per_step": expected_tokens_per_step(alpha, k), "plain_ms": plain["ms"], "draft_ms": drafted["ms"],
            "verify_ms": verify["ms"], "verify_memory_bound": verify["memory_ms"] >= verify["compute_ms"],
            "plain_memory_bound": plain["memory_ms"] >= plain["compute_ms"]}


def crossover_batch(target: GPT, draft: GPT, alpha: float, k: int, context: int, bandwidth: float | None = None,
                    peak_flops: float | None = None, max_batch: int = 1 << 16) -> int | None:
    """The smallest B ≤ ``max_batch`` with `predicted_batch_speedup` < 1, or None: B doubles until S < 1, then
    bisection between the last two (the roofline's r(B) only grows with B, so S stays below 1 beyond)."""
    _check_prediction(target, draft, alpha, k, context, bandwidth, peak_flops)
    check_int("max_batch", max_batch)

    def loses(B: int) -> bool:
        return predicted_batch_speedup(target, draft, alpha, k, B, context, bandwidth, peak_flops)["speedup"] < 1

    if loses(1):
        return 1
    low, high = 1, 2
    while not loses(min(high, max_batch)):
        if high >= max_batch:
            return None
        low, high = high, 2 * high
    high = min(high, max_batch)
    while high - low > 1:                                            # loses(high), not loses(low)
        mid = (low + high) // 2
        low, high = (low, mid) if loses(mid) else (mid, high)
    return high


def crossover_formula(target: GPT, draft: GPT, alpha: float, k: int, context: int, bandwidth: float | None = None,
                      peak_flops: float | None = None) -> dict:
    """The two batch sizes of the module docstring in closed form, from the per-row bytes and FLOPs of
    `decode_step_cost`: {"verify_bound": B_v = Ψ_b / ((k+1)·f / R − m), past which the verify pass is compute
    bound, "crossover": B× = (E·Ψ_b − k·Ψ_b,d) / ((k+1)·f / R − (E·m − k·m_d)), where S = 1 if the verify pass
    is compute bound there and the plain and draft steps memory bound}. None where a denominator is ≤ 0: for
    B_v, the verify pass never becomes compute bound (m ≥ (k+1)·f / R); for B×, S ≥ 1 at every batch
    (E·m − k·m_d ≥ (k+1)·f / R)."""
    bandwidth, peak_flops = _check_prediction(target, draft, alpha, k, context, bandwidth, peak_flops)
    E = expected_tokens_per_step(alpha, k)
    Psi, Psi_d = weight_bytes(target), weight_bytes(draft)
    m = decode_step_cost(target, 1, context)["bytes"] - Psi
    m_d = decode_step_cost(draft, 1, context)["bytes"] - Psi_d
    verify_flops = (k + 1) * decode_step_cost(target, 1, context)["flops"] / (peak_flops / bandwidth)  # (k+1)·f/R
    return {"verify_bound": Psi / (verify_flops - m) if verify_flops > m else None,
            "crossover": ((E * Psi - k * Psi_d) / (verify_flops - (E * m - k * m_d))
                          if verify_flops > E * m - k * m_d else None)}
