"""Latencies measured on this device: the time of each decode step, and what speculative decoding costs and gains.

Both time with `lab.core.timing.time_ms` (CUDA events on a GPU, ``perf_counter`` on the CPU) and are shared by
chapter 6's notebook and its suite.
"""

from __future__ import annotations

import torch

from lab.core.checks import check_int
from lab.core.timing import time_ms
from lab.infer.generate import Decoder, generate
from lab.infer.speculative import speculative_generate
from lab.models.gpt import GPT


@torch.no_grad()
def step_latencies(model: GPT, ids: torch.Tensor, prompt_len: int, kv_cache: bool, repeats: int = 1,
                   chunk: int = 1) -> list[float]:
    """Time (ms) of each decode step after a prefill of ``prompt_len`` tokens, feeding the rest of
    ids (B, T) ``chunk`` tokens at a time (teacher forcing: the cost does not depend on which tokens;
    chunk = k + 1 is the verification pass of speculative decoding); element i is the step that starts
    at position prompt_len + i·chunk.

    Each step is timed by `time_ms` (median of ``repeats`` calls after a warm-up): one call rewinds the
    decoder to the step's start and feeds its chunk, the same keys and values rewritten, the same work.
    """
    B, T = ids.shape
    if not 0 < prompt_len < T or chunk < 1:
        raise ValueError(f"need prompt_len in [1, {T - 1}] and chunk >= 1, got prompt_len={prompt_len}, chunk={chunk}")
    decoder = Decoder(model, B, T, kv_cache=kv_cache)
    decoder.extend(ids[:, :prompt_len])

    def step(t: int) -> None:
        decoder.rewind(t)
        decoder.extend(ids[:, t:t + chunk])

    return [time_ms(lambda: step(t), ids.device, repeats) for t in range(prompt_len, T - chunk + 1, chunk)]


@torch.no_grad()
def speculative_speedup(target: GPT, draft: GPT, prompts: torch.Tensor, new_tokens: int, ks, ids: torch.Tensor,
                        prompt_len: int, *, temperature: float = 1.0, seed: int = 0, repeats: int = 2,
                        step_repeats: int = 3) -> dict:
    """What speculative decoding costs and gains on this device, beside the inputs of its formula.

    With t(m, n) the median time of a KV-cache decode step of model m fed n tokens at once
    (`step_latencies` on ``ids`` (1, T) from position ``prompt_len`` to the end, ``step_repeats`` calls
    per step, median over the steps):

        c   = t(draft, 1) / t(target, 1)            the draft's step in target steps
        r_k = t(target, k + 1) / t(target, 1)       the verification pass over k + 1 tokens, in steps
        speed-up_k = T_plain / T_spec(k)

    where T_plain is the time to sample ``new_tokens`` tokens from each of ``prompts`` (P, T₀) with
    `generate` and T_spec(k) the same with `speculative_generate` and k draft tokens (``temperature``,
    ``seed`` for every prompt), each the median of ``repeats`` calls of `time_ms`. The formula's
    speed-up (1 − α^{k+1}) / ((1 − α)(c·k + r_k)) (`lab.infer.speculative.expected_speedup`) takes c and
    r_k from here and α from the accepted tokens.

    Returns {"target_step_ms", "draft_step_ms", "c", "r": {k: r_k}, "plain_ms",
    "speculative_ms": {k: ms}, "speedup": {k: speed-up_k}}.
    """
    ks = list(ks)
    if not ks:
        raise ValueError("ks must be a non-empty list of draft lengths, got []")
    for j, k in enumerate(ks):
        check_int(f"ks[{j}]", k)
    if prompts.dim() != 2 or len(prompts) == 0:
        raise ValueError(f"prompts must be (P, T0) token ids with P >= 1, got shape {tuple(prompts.shape)}")
    check_int("new_tokens", new_tokens)
    if ids.dim() != 2 or len(ids) != 1:
        raise ValueError(f"ids must be (1, T) token ids, got shape {tuple(ids.shape)}")
    device = prompts.device

    def step_ms(model: GPT, chunk: int = 1) -> float:
        times = step_latencies(model, ids, prompt_len, True, step_repeats, chunk)
        return float(torch.tensor(times).median())

    target_ms, draft_ms = step_ms(target), step_ms(draft)
    r = {k: step_ms(target, k + 1) / target_ms for k in ks}
    plain_ms = time_ms(lambda: [generate(target, x, new_tokens, temperature=temperature, seed=seed)
                                for x in prompts], device, repeats)
    spec_ms = {k: time_ms(lambda: [speculative_generate(target, draft, x, new_tokens, k=k, temperature=temperature,
                                                        seed=seed) for x in prompts], device, repeats)
               for k in ks}
    return {"target_step_ms": target_ms, "draft_step_ms": draft_ms, "c": draft_ms / target_ms, "r": r,
            "plain_ms": plain_ms, "speculative_ms": spec_ms, "speedup": {k: plain_ms / spec_ms[k] for k in ks}}
