"""Latencies measured on this device: the time of each decode step, and what speculative decoding costs and gains.

`step_latencies` times each step with `lab.core.timing.time_ms` (CUDA events on a GPU, ``perf_counter`` on the
CPU). The costs and speed-ups of speculative decoding are CPU timings taken in paired rounds
(`lab.core.timing.time_interleaved`), their ratios by `lab.core.stats.paired_ratio`. Used by chapter 6's notebook.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping

import torch

from lab.core.checks import check_int, check_number, check_tensor
from lab.core.stats import paired_ratio, paired_t_p, verdicts
from lab.core.timing import time_interleaved, time_ms
from lab.infer.generate import Decoder, check_seed, generate
from lab.infer.kv_cache import check_token_ids
from lab.infer.speculative import speculative_generate
from lab.models.gpt import GPT, check_gpt


@torch.no_grad()
def step_latencies(model: GPT, ids: torch.Tensor, prompt_len: int, kv_cache: bool, repeats: int = 1,
                   chunk: int = 1, stride: int | None = None) -> list[float]:
    """Time (ms) of each decode step from position ``prompt_len`` on (the prompt), feeding the rest of
    ids (B, T) ``chunk`` tokens at a time (teacher forcing: the cost does not depend on which tokens;
    chunk = k + 1 is the verification pass of speculative decoding); element i is the step that starts
    at position prompt_len + i·stride (``stride`` defaults to ``chunk``: every step; a larger stride
    times every stride-th position only, a sample of the sweep at a fraction of its cost).

    Each step is timed by `time_ms` (median of ``repeats`` calls after a warm-up): one call rewinds the
    decoder to the step's start and feeds its chunk, the same keys and values rewritten, the same work.
    """
    check_gpt("model", model)
    check_token_ids("ids", ids, model)
    B, T = ids.shape
    check_int("prompt_len", prompt_len, 1, T - 1)
    check_int("chunk", chunk, 1, T - prompt_len)                 # a longer chunk would time no step at all
    stride = chunk if stride is None else check_int("stride", stride, 1)
    decoder = Decoder(model, B, T, kv_cache=kv_cache)
    decoder.extend(ids)                 # every position once, untimed: any step can rewind to its start

    def step(t: int) -> None:
        decoder.rewind(t)
        decoder.extend(ids[:, t:t + chunk])

    times = []
    for t in range(prompt_len, T - chunk + 1, stride):
        times.append(time_ms(lambda: step(t), ids.device, repeats))
        decoder.length = T      # the cache (or token buffer) still holds every position: the same values rewritten
    return times


def _sweep(model: GPT, ids: torch.Tensor, prompt_len: int, chunk: int) -> tuple[Callable[[], None], int]:
    """A function that runs every KV-cache decode step of ``ids`` (1, T) from ``prompt_len`` on, ``chunk`` tokens
    at a time (teacher forcing, after one prefill), and the number of steps it runs."""
    decoder = Decoder(model, 1, ids.shape[1])
    decoder.extend(ids[:, :prompt_len])
    starts = range(prompt_len, ids.shape[1] - chunk + 1, chunk)

    def sweep() -> None:
        for t in starts:
            decoder.rewind(t)
            decoder.extend(ids[:, t:t + chunk])

    return sweep, len(starts)


@torch.no_grad()
def speculative_costs(target: GPT, draft: GPT, ids: torch.Tensor, prompt_len: int, ks, rounds: int = 4) -> dict:
    """The inputs of the speed-up formula on this CPU, from paired rounds. With t(m, n) the time per step of a
    sweep of KV-cache decode steps of model m fed n tokens at once over ``ids`` (1, T) from ``prompt_len`` on
    (teacher forcing: the work does not depend on which tokens),

        c   = t(draft, 1) / t(target, 1)            the draft's step in target steps
        r_k = t(target, k + 1) / t(target, 1)       the verification pass over k + 1 tokens, in steps

    for each k in ``ks``; the sweeps are timed in turn, ``rounds`` rounds (`lab.core.timing.time_interleaved`),
    and each ratio is the geometric mean over the rounds (`lab.core.stats.paired_ratio`), so a load that comes
    and goes falls on numerator and denominator alike. The formula (1 − α^{k+1}) / ((1 − α)(c·k + r_k)) is
    `lab.infer.speculative.expected_speedup`. Returns {"target_step_ms", "draft_step_ms" (medians), "c",
    "r": {k: r_k}}.
    """
    check_gpt("target", target)
    check_gpt("draft", draft)
    ks = _draft_lengths(ks)
    check_token_ids("ids", ids, target)
    check_token_ids("ids", ids, draft)
    if len(ids) != 1:
        raise ValueError(f"ids must be (1, T) token ids, got shape {tuple(ids.shape)}")
    check_int("prompt_len", prompt_len)
    if not 0 < prompt_len < ids.shape[1] - max(ks):
        raise ValueError(f"prompt_len={prompt_len} must leave room for a step of {max(ks) + 1} tokens in "
                         f"ids of length {ids.shape[1]}")
    sweeps = {("target", 1): _sweep(target, ids, prompt_len, 1), ("draft", 1): _sweep(draft, ids, prompt_len, 1)}
    sweeps |= {("target", k + 1): _sweep(target, ids, prompt_len, k + 1) for k in ks}
    times = time_interleaved({key: fn for key, (fn, _) in sweeps.items()}, rounds)
    per_step = {key: [ms / sweeps[key][1] for ms in times[key]] for key in sweeps}
    base = per_step["target", 1]
    return {"target_step_ms": statistics.median(base), "draft_step_ms": statistics.median(per_step["draft", 1]),
            "c": paired_ratio(per_step["draft", 1], base)["ratio"],
            "r": {k: paired_ratio(per_step["target", k + 1], base)["ratio"] for k in ks}}


def _draft_lengths(ks) -> list[int]:
    if isinstance(ks, (str, bytes, torch.Tensor)) or not isinstance(ks, Iterable):
        raise TypeError(f"ks must be a list of draft lengths (ints >= 1), got {ks!r:.80} ({type(ks).__name__})")
    ks = list(ks)
    if not ks:
        raise ValueError("ks must be a non-empty list of draft lengths, got []")
    for j, k in enumerate(ks):
        check_int(f"ks[{j}]", k)
    return ks


@torch.no_grad()
def speculative_speedups(target: GPT, draft: GPT, prompts: torch.Tensor, new_tokens: int,
                         runs: Mapping[str, tuple[int, float]], rounds: int = 8, seed: int = 0) -> dict[str, dict]:
    """Measured speed-ups of speculative decoding over plain decoding, paired and interleaved (CPU).

    ``runs`` {name: (k, τ)}: draft length k and temperature τ (0 = greedy). One call of a run generates
    ``new_tokens`` tokens from each of ``prompts`` (P, T₀) with `speculative_generate` (seed ``seed``); its
    plain counterpart does the same with `generate` at the same τ. All of them are timed in turn, round after
    round (`lab.core.timing.time_interleaved`, ``rounds`` rounds), so a load on the machine falls on all
    alike, and each speed-up is the geometric mean of plain / speculative within a round with its Student-t
    95% interval (`lab.core.stats.paired_ratio`). Whole calls are timed: prefill and the draft's own
    prefill included. The runs form one family: "p" is the paired t-test's two-sided p-value of log speed-up
    = 0, and "verdict" the verb of `lab.core.stats.verdicts` on the log speed-ups (Holm across the runs):
    "higher" (faster than plain decoding), "lower" (slower), "equivalent" (within ±1%) or "inconclusive".
    Returns {name: {"ratio", "ci_low", "ci_high", "n", "p", "verdict", "plain_ms", "speculative_ms"}}
    (the two medians over the rounds).
    """
    check_gpt("target", target)
    check_gpt("draft", draft)
    check_int("new_tokens", new_tokens)
    _check_prompts(target, draft, prompts, new_tokens)
    _check_runs(runs)
    check_seed(seed)
    fns = {f"plain, τ = {t:g}": (lambda t=t: [generate(target, x, new_tokens, temperature=t, seed=seed)
                                              for x in prompts]) for _, t in runs.values()}
    fns |= {name: (lambda k=k, t=t: [speculative_generate(target, draft, x, new_tokens, k=k, temperature=t,
                                                          seed=seed) for x in prompts])
            for name, (k, t) in runs.items()}
    times = time_interleaved(fns, rounds)
    out = {}
    for name, (_, t) in runs.items():
        plain = times[f"plain, τ = {t:g}"]
        out[name] = {**paired_ratio(plain, times[name]), "p": paired_t_p(plain, times[name]),
                     "plain_ms": statistics.median(plain), "speculative_ms": statistics.median(times[name])}
    logs = {name: {"ci_low": math.log(r["ci_low"]), "ci_high": math.log(r["ci_high"]), "p": r["p"]}
            for name, r in out.items()}
    for name, verb in verdicts(logs).items():
        out[name]["verdict"] = verb
    return out


def _check_prompts(target: GPT, draft: GPT, prompts: torch.Tensor, new_tokens: int) -> None:
    """``prompts`` (P >= 1, T₀) int64 token ids of both models, with room for ``new_tokens`` in both contexts."""
    check_tensor("prompts", prompts, dtypes=(torch.int64,))              # as `generate` takes them
    if prompts.dim() != 2 or len(prompts) == 0:
        raise ValueError(f"prompts must be (P, T0) token ids with P >= 1, got shape {tuple(prompts.shape)}")
    for model, name in ((target, "target"), (draft, "draft")):
        check_token_ids("prompts", prompts, model)
        if prompts.shape[1] + new_tokens > model.config.context_length:
            raise ValueError(f"prompts of {prompts.shape[1]} tokens + new_tokens={new_tokens} exceed the {name}'s "
                             f"context_length={model.config.context_length}")


def _check_runs(runs: Mapping[str, tuple[int, float]]) -> None:
    """``runs`` {name: (k, τ)}: draft lengths k >= 1, temperatures τ >= 0, names apart from the plain runs'."""
    if not isinstance(runs, Mapping):
        raise TypeError(f"runs must be a dict {{name: (k, temperature)}}, got {type(runs).__name__}")
    if not runs:
        raise ValueError("runs must name at least one (k, temperature) to time")
    for name, run in runs.items():
        if not isinstance(run, (tuple, list)) or len(run) != 2:
            raise TypeError(f"runs[{name!r}] must be a pair (k, temperature), got {run!r:.80}")
        check_number(f"runs[{name!r}] temperature", run[1], low=0)
        if isinstance(name, str) and name.startswith("plain, τ = "):     # would overwrite a plain run's timing
            raise ValueError(f"runs[{name!r}]: names starting with 'plain, τ = ' are taken by the plain runs")
    _draft_lengths(k for k, _ in runs.values())
