"""Suite ``spec-batch`` of `lab.bench` (chapter 6): speculative decoding as the batch grows, measured on the CPU
and predicted for a GPU.

    OMP_NUM_THREADS=1 python -m lab.bench spec-batch --device cpu       # results/spec-batch_cpu.json

The book's model is the target and its distilled 2-layer draft (`lab.infer.draft.load_draft`) the draft. The
prompts are `SETTINGS`' P windows of T₀ tokens of the test split at evenly spaced starts (every part of the
split, as the notebook cuts its prompts); each generates n tokens by sampling at τ, in batches of B rows
(`speculative_generate_batch`), for every B of ``batches`` and every draft length k of ``ks``. The record holds

* "acceptance" {k: {B: ...}}: α and the tokens per target pass pooled over all P prompts (run as P/B batches of B
  rows), each with its 95% interval over the prompts (`acceptance_over_rows`), and "tokens_per_batch_pass":
  n / passes averaged over the batches; a batch makes as many passes as its slowest row;
* "speedup" {k: {B: ...}}: plain batched sampling (`generate`) over speculative sampling, whole calls on the
  first max(B, ``timed_prompts``) prompts in batches of B, timed in turn in ``rounds`` paired rounds
  (`lab.core.timing.time_interleaved`); the geometric mean of the rounds' ratios with its Student-t 95% interval
  (`lab.core.stats.paired_ratio`), its p-value and verb, Holm across every (k, B); and the tokens per batch
  pass of that timed work;
* "costs" {B: ...}: c(B) = t(draft, B × 1) / t(target, B × 1) and r_k(B) = t(target, B × (k+1)) / t(target, B × 1)
  on this CPU, teacher-forced KV-cache steps (`lab.infer.latency.step_latencies`) summed per round over
  ``cost_steps`` steps, paired over ``cost_rounds`` rounds; "explained" {k: {B: tokens per batch pass / (c·k + r_k)}},
  the formula of `lab.infer.speculative_batch` with the measured inputs, beside the measured speed-up;
* "live": the notebook's live configuration (greedy, k = 4, 4 ragged prompts at B = 4): tokens, accepted counts,
  and whether each row equals `generate` of it alone;
* "predicted" {shape: {k: {context: {"curve", "crossover", "crossover_formula"}}}}: S(B) on the H100 roofline
  (`predicted_batch_speedup`, `lab.core.ceilings.device_ceilings`: datasheet figures until a GPU record exists)
  for `SHAPES` (Llama-2-7B's shape and the same with 8 key/value heads; the draft keeps the target's width,
  embeddings and head and 2 of its layers, as the book's draft keeps 2 of 6) at the α measured for that k
  (mean over B), the batch where S falls below 1, and the closed forms of it and of the batch where the verify
  pass becomes compute bound.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import replace

import torch
from tqdm.auto import tqdm

from lab.core.ceilings import device_ceilings
from lab.core.stats import paired_ratio, paired_t_p, verdicts
from lab.core.timing import time_interleaved
from lab.infer.generate import generate
from lab.infer.latency import step_latencies
from lab.infer.speculative_batch import (acceptance_over_rows, crossover_batch, crossover_formula,
                                         predicted_batch_speedup, speculative_generate_batch)
from lab.infer.suite import LLAMA2_7B_SHAPE, source_text
from lab.models.gpt import GPT, GPTConfig

SEED = 0
SETTINGS = {"prompts": 32, "prompt_len": 16, "new_tokens": 32, "temperature": 1.0, "batches": [1, 2, 4, 8, 16, 32],
            "ks": [4, 2], "timed_prompts": 8, "rounds": 4, "cost_steps": 8, "cost_rounds": 4,
            "live": {"batch": 4, "k": 4, "lengths": [16, 13, 10, 7], "new_tokens": 32},
            "predicted_batches": [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256],
            "contexts": [1, 128, 2048], "draft_layers": 2}
QUICK = {**SETTINGS, "prompts": 4, "new_tokens": 4, "batches": [1, 4], "timed_prompts": 2, "rounds": 2,
         "cost_steps": 1, "cost_rounds": 2, "live": {**SETTINGS["live"], "new_tokens": 4},
         "predicted_batches": [1, 64], "contexts": [1]}
SHAPES = {"llama-2-7b": LLAMA2_7B_SHAPE, "llama-2-7b, 8 kv heads": replace(LLAMA2_7B_SHAPE, n_kv_head=8)}
QUICK_SHAPES = {"tiny": GPTConfig(vocab_size=256, context_length=64, d_model=64, n_layer=4, n_head=4, n_kv_head=2,
                                  d_ff=128)}


def _models(device: torch.device, quick: bool) -> tuple[GPT, GPT]:
    """(target, draft): the book's model and its distilled draft; ``quick``: a tiny random pair."""
    if quick:
        from lab.distill import gpt_student

        torch.manual_seed(SEED)
        tiny = GPT(GPTConfig(vocab_size=256, context_length=64, d_model=64, n_layer=2, n_head=4, n_kv_head=2,
                             d_ff=128)).to(device).eval()
        return tiny, gpt_student(tiny, 1).eval()
    from lab.infer.draft import load_draft
    from lab.models import load_pretrained_lm

    return load_pretrained_lm("lab").to(device).eval(), load_draft().to(device).eval()


def _windows(text: torch.Tensor, n: int, length: int) -> torch.Tensor:
    """(n, length) windows of ``text`` at n evenly spaced starts (the first at 0, the last at the end)."""
    starts = torch.linspace(0, len(text) - length, n).long().tolist()
    return torch.stack([text[s:s + length] for s in starts])


def _batched(target: GPT, draft: GPT, prompts: torch.Tensor, B: int, k: int, s: dict) -> list[list]:
    """`speculative_generate_batch` of ``prompts`` in consecutive batches of B rows (seed SEED + batch index)."""
    return [speculative_generate_batch(target, draft, prompts[i:i + B], s["new_tokens"], k, s["temperature"],
                                       seed=SEED + i) for i in range(0, len(prompts), B)]


def _per_batch_pass(batches: list[list], new_tokens: int) -> float:
    """n / passes averaged over the batches: tokens each row gains per target pass of its batch."""
    return new_tokens * len(batches) / sum(max(r.steps for r in batch) for batch in batches)


def acceptance(target: GPT, draft: GPT, prompts: torch.Tensor, s: dict, bar) -> dict:
    """{k: {B: `acceptance_over_rows` of every prompt + "tokens_per_batch_pass"}}."""
    out = {}
    for k in s["ks"]:
        out[k] = {}
        for B in s["batches"]:
            batches = _batched(target, draft, prompts, B, k, s)
            out[k][B] = {**acceptance_over_rows([r for batch in batches for r in batch], seed=SEED),
                         "tokens_per_batch_pass": _per_batch_pass(batches, s["new_tokens"])}
            bar.update()
    return out


def speedups(target: GPT, draft: GPT, prompts: torch.Tensor, s: dict) -> dict:
    """{k: {B: paired_ratio of plain / speculative + "p", "verdict", "plain_ms", "speculative_ms" (medians),
    "tokens_per_batch_pass"}}, every (B, plain or k) timed in turn in the same rounds."""
    fns, outputs = {}, {}

    def plain(work: torch.Tensor, B: int) -> None:
        for i in range(0, len(work), B):
            generate(target, work[i:i + B], s["new_tokens"], temperature=s["temperature"], seed=SEED + i)

    def speculative(work: torch.Tensor, B: int, k: int) -> None:
        outputs[B, k] = _batched(target, draft, work, B, k, s)          # the same every call (seeded)

    for B in s["batches"]:
        work = prompts[:max(B, s["timed_prompts"])]
        fns[B, "plain"] = lambda w=work, B=B: plain(w, B)
        fns |= {(B, k): (lambda w=work, B=B, k=k: speculative(w, B, k)) for k in s["ks"]}
    times = time_interleaved(fns, s["rounds"])
    out = {k: {} for k in s["ks"]}
    for B in s["batches"]:
        base = times[B, "plain"]
        for k in s["ks"]:
            out[k][B] = {**paired_ratio(base, times[B, k]), "p": paired_t_p(base, times[B, k]),
                         "plain_ms": statistics.median(base), "speculative_ms": statistics.median(times[B, k]),
                         "tokens_per_batch_pass": _per_batch_pass(outputs[B, k], s["new_tokens"])}
    logs = {(k, B): {"ci_low": math.log(r["ci_low"]), "ci_high": math.log(r["ci_high"]), "p": r["p"]}
            for k, by_B in out.items() for B, r in by_B.items()}
    for (k, B), verb in verdicts(logs).items():          # one family: Holm across every (k, B)
        out[k][B]["verdict"] = verb
    return out


def step_costs(target: GPT, draft: GPT, text: torch.Tensor, s: dict, bar) -> dict:
    """{B: {"c", "c_low", "c_high", "r": {k: ...}, "r_low", "r_high", "target_step_ms"}} on this device."""
    stride, T0 = max(s["ks"]) + 1, s["prompt_len"]
    out = {}
    for B in s["batches"]:
        ids = _windows(text, B, T0 + s["cost_steps"] * stride).to(next(target.parameters()).device)
        sweeps = {"target": (target, 1), "draft": (draft, 1)} | {k: (target, k + 1) for k in s["ks"]}
        sums = {name: [] for name in sweeps}
        for _ in range(s["cost_rounds"]):
            for name, (model, chunk) in sweeps.items():
                sums[name].append(sum(step_latencies(model, ids, T0, True, chunk=chunk, stride=stride)))
        c = paired_ratio(sums["draft"], sums["target"])
        r = {k: paired_ratio(sums[k], sums["target"]) for k in s["ks"]}
        out[B] = {"c": c["ratio"], "c_low": c["ci_low"], "c_high": c["ci_high"],
                  "r": {k: v["ratio"] for k, v in r.items()}, "r_low": {k: v["ci_low"] for k, v in r.items()},
                  "r_high": {k: v["ci_high"] for k, v in r.items()},
                  "target_step_ms": min(sums["target"]) / s["cost_steps"]}
        bar.update()
    return out


def live(target: GPT, draft: GPT, prompts: torch.Tensor, s: dict) -> dict:
    """The notebook's live configuration: greedy, ragged rows (the first prompts cut to ``lengths``)."""
    cfg = s["live"]
    rows = [p[:n] for p, n in zip(prompts[:cfg["batch"]], cfg["lengths"])]
    results = speculative_generate_batch(target, draft, rows, cfg["new_tokens"], cfg["k"])
    return {**cfg, "tokens": [r.tokens.tolist() for r in results], "accepted": [r.accepted for r in results],
            "equal_generate": [torch.equal(r.tokens, generate(target, x, cfg["new_tokens"]))
                               for r, x in zip(results, rows)]}


def _pair(config: GPTConfig, draft_layers: int, meta: bool) -> tuple[GPT, GPT]:
    """A bf16 target of ``config`` and its draft of ``draft_layers`` layers, on the ``meta`` device (sizes without
    storage, for a 7B shape) or, for a tiny quick shape, on the CPU (no meta-device machinery to import)."""
    def build() -> tuple[GPT, GPT]:
        return (GPT(config).to(torch.bfloat16), GPT(replace(config, n_layer=draft_layers)).to(torch.bfloat16))

    if not meta:
        return build()
    with torch.device("meta"):
        return build()


def predicted(shapes: dict[str, GPTConfig], alphas: dict[int, float], s: dict, meta: bool = True) -> dict:
    """{shape: {k: {context: {"curve": [predicted_batch_speedup per B], "crossover" (`crossover_batch`),
    "crossover_formula", "verify_bound_formula" (`crossover_formula`)}}}}."""
    out = {}
    for name, config in shapes.items():
        target, draft = _pair(config, s["draft_layers"], meta)
        out[name] = {k: {S: {"curve": [{"batch": B, **predicted_batch_speedup(target, draft, alpha, k, B, S)}
                                       for B in s["predicted_batches"]],
                             "crossover": crossover_batch(target, draft, alpha, k, S),
                             **{f"{key}_formula": value
                                for key, value in crossover_formula(target, draft, alpha, k, S).items()}}
                         for S in s["contexts"]} for k, alpha in alphas.items()}
    return out


def run(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """Every measurement of the module docstring on the CPU (the notebook's device), and the predicted curves."""
    if device.type != "cpu":
        raise ValueError(f"device={str(device)!r}: suite spec-batch runs on the cpu, where the notebook that reads "
                         "its record runs (its GPU curve is a roofline prediction)")
    s = QUICK if quick else SETTINGS
    target, draft = _models(device, quick)
    text = source_text(target)
    prompts = _windows(text, s["prompts"], s["prompt_len"]).to(device)
    bar = tqdm(total=(len(s["ks"]) + 1) * len(s["batches"]), desc="spec-batch", disable=not progress)
    with torch.no_grad():
        record = {"seed": SEED, "settings": s, "threads": torch.get_num_threads(),
                  "acceptance": acceptance(target, draft, prompts, s, bar),
                  "costs": step_costs(target, draft, text, s, bar), "speedup": speedups(target, draft, prompts, s),
                  "live": live(target, draft, prompts, s)}
    bar.close()
    record["explained"] = {k: {B: record["speedup"][k][B]["tokens_per_batch_pass"] /
                               (cost["c"] * k + cost["r"][k]) for B, cost in record["costs"].items()}
                           for k in s["ks"]}
    alphas = {k: sum(a["alpha"] for a in by_B.values()) / len(by_B) for k, by_B in record["acceptance"].items()}
    ceilings = device_ceilings()
    record["predicted"] = {"ceilings": {"label": ceilings.label, "source": ceilings.source,
                                        "bandwidth": ceilings.bandwidth, "peak_flops": ceilings.peak_flops},
                           "alpha": alphas, **predicted(QUICK_SHAPES if quick else SHAPES, alphas, s, not quick)}
    return record
