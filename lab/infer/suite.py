"""Suite ``infer`` of `lab.bench` (chapter 6): decode speed of every configuration against its speed of light.

For each model and batch size B ∈ (1, 8, 32), greedy generation of n new tokens after a prompt of T₀
tokens, in the configurations

    no_cache             every step re-runs the whole sequence (`generate(kv_cache=False)`)
    kv_cache             static KV cache, eager PyTorch
    kv_cache_cuda_graph  the same decode step replayed from a CUDA graph (GPU only)
    int8_w8a8            decoder linears in int8 (`lab.quant.W8A8Linear`, int8 Triton kernel), + graph on a GPU
    int4_weight_only     decoder linears in int4, RTN, groups of 128 (64 for the book's model; `lab.quant.Int4Linear`,
                         int4 Triton kernel), + graph
    speculative          the distilled 2-layer draft proposes k = 4 tokens (`speculative_generate`), B = 1 only

The decode time per step is (t(n) − t(n/2)) / (n − n/2), with t(·) the median wall time of a whole
`generate` call, so that the prefill and the one-off costs of a call (CUDA-graph capture, the draft's
first steps) drop out; tokens/s = B / that. All times come from `lab.core.timing.time_ms`. Beside
each: the step's bytes and FLOPs at the mean context T₀ + n/2 (`lab.infer.roofline`), the speed of
light max(bytes / bandwidth, FLOPs / peak), and the fraction of it reached, t_min / t_measured (1 = at
the ceiling; speculative decoding can pass 1, since one target pass emits several tokens). The two
ceilings are measured on the device at the start of the run (`measure_ceilings`: a device copy of
1 GiB on a GPU, a large matmul in the run's dtype) and recorded under ``"ceilings"``, where
`lab.core.ceilings.device_ceilings` reads them back as the device's measured ceilings; until a GPU
run has recorded them, the book's GPU figures use the datasheet ceilings of that module, labelled so.

Models: the book's pretrained LM (6.5M parameters; on a GPU its decode step is launch bound, which
is what CUDA graphs address) and, on a GPU, a model of Llama-2-7B's shape with random weights
(`LLAMA2_7B_SHAPE`: C = 4096, 32 layers, 32 query and 32 key/value heads, F = 11008, untied; 6.74B
parameters, 13.5 GB in bf16), where decode is memory bound and int8/int4 pay off; random weights do
not change the speed, and its speculative row is left out (acceptance needs a trained pair). Every
configuration's greedy tokens are compared with the KV-cache output of the same model (``agreement``:
1.0 = identical; quantized models may differ).

Serving: static vs continuous batching (`lab.infer.serve`, paged cache) of a mixed-length trace of
real prompts on the book's model.

The book's model is prompted with windows of the test split, so the corpus must be in ``.data/``
(`python -m lab.data`; on an offline GPU machine, carry the folder).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from lab.core.ceilings import measure_ceilings
from lab.core.runtime import seed_everything
from lab.core.timing import check_then_time, time_ms
from lab.infer.generate import generate
from lab.infer.paged import BLOCK_SIZE
from lab.infer.roofline import decode_step_cost, speed_of_light_ms, weight_bytes
from lab.infer.scheduler import serve, synthetic_trace
from lab.infer.speculative import speculative_generate
from lab.kernels.aot.shapes import MatmulShapes, PagedShapes
from lab.models.gpt import GPT, GPTConfig
from lab.models.pretrained import book_config
from lab.quant.affine import rtn_quantize
from lab.quant.linear import (Int4Linear, decoder_linear_names, decoder_linear_shapes, replace_linears,
                              w8a8_quantize_model)

CONFIGS = ("no_cache", "kv_cache", "kv_cache_cuda_graph", "int8_w8a8", "int4_weight_only", "speculative")
# Llama-2-7B (Touvron et al., 2023): multi-head attention, 32 key/value heads (GQA came with the 34B/70B models).
LLAMA2_7B_SHAPE = GPTConfig(vocab_size=32000, context_length=4096, d_model=4096, n_layer=32, n_head=32,
                            n_kv_head=32, d_ff=11008, tie_embeddings=False)
# Llama-2-70B: grouped-query attention, 64 query heads sharing 8 key/value heads (D = 128); 68.98B parameters.
LLAMA2_70B_SHAPE = GPTConfig(vocab_size=32000, context_length=4096, d_model=8192, n_layer=80, n_head=64,
                             n_kv_head=8, d_ff=28672, tie_embeddings=False)

# bench_paged_decode's 7B-class decode, (query, kv) heads, D = 128: (32, 8) is Llama-3-8B's and Mistral-7B's
# grouped-query layer, (32, 32) Llama-2-7B's; batches; cached positions
PAGED_HEADS, PAGED_HEAD_DIM, PAGED_BATCHES, PAGED_CONTEXT = ((32, 8), (32, 32)), 128, (1, 8, 32), 2048

@dataclass(frozen=True)
class Setup:
    batches: tuple[int, ...]
    prompt_len: int
    new_tokens: int
    repeats: int
    draft_k: int
    trace_requests: int
    serve_batches: tuple[int, ...]


def setup(device: torch.device, quick: bool, short: bool = False) -> Setup:
    """The run's sizes: ``quick`` (tiny, a smoke test), ``short`` (the GPU run's form: batches 1 and 8,
    32 new tokens, one serving batch), else the full suite for the device."""
    if quick:
        return Setup((1, 2), 8, 4, 1, 2, 6, (2,))
    if device.type == "cuda":
        if short:
            return Setup((1, 8), 64, 32, 2, 4, 32, (8,))
        return Setup((1, 8, 32), 128, 64, 3, 4, 128, (8, 32))
    if short:
        return Setup((1, 8), 32, 16, 2, 4, 24, (4,))
    return Setup((1, 8, 32), 32, 32, 3, 4, 48, (4, 16))


def quantized(model: GPT, kind: str, dtype: torch.dtype) -> GPT:
    """A copy of ``model`` with its decoder linears in int8 (W8A8, per-token activations) or int4 (RTN, groups of
    128 input columns, or 64 / 32 where 128 does not divide the widths: the book's d_ff = 704 takes 64)."""
    model = copy.deepcopy(model)
    if kind == "int8_w8a8":
        return w8a8_quantize_model(model)
    group = int4_group(model.config)
    replace_linears(model, decoder_linear_names(model),
                    lambda name, lin: Int4Linear(rtn_quantize(lin.weight.float(), 4, group), None, scale_dtype=dtype))
    return model


def int4_group(config: GPTConfig) -> int:
    """The int4 group size of `quantized`: the first of 128, 64, 32 dividing both input widths C and F."""
    widths = {config.d_model, config.d_ff}
    group = next((g for g in (128, 64, 32) if all(w % g == 0 for w in widths)), None)
    if group is None:
        raise ValueError(f"no int4 group size in (128, 64, 32) divides the input widths {sorted(widths)}")
    return group


def kernel_shapes() -> list[MatmulShapes | PagedShapes]:
    """What this suite runs on a GPU, for the ahead-of-time compile: the int8 / int4 decoder linears of the
    book's model and of `LLAMA2_7B_SHAPE` at decode (M = B) and prefill (M = B · T₀), full and short form;
    the serving run's paged decode (the book's model at `serve`'s block size, every table width up to its
    context: a table grows one block at a time); and `bench_paged_decode`'s 7B-class decode (`PAGED_HEADS`)."""
    cuda, book = torch.device("cuda"), book_config()
    out = []
    for form in (setup(cuda, quick=False), setup(cuda, quick=False, short=True)):
        Ms = tuple(sorted({*form.batches, *(B * form.prompt_len for B in form.batches)}))
        for name, config in (("book model", book), ("llama-2-7b shape", LLAMA2_7B_SHAPE)):
            out.append(MatmulShapes(f"infer bench ({name})", ("int4", "int8"), Ms, decoder_linear_shapes(config),
                                    int4_group(config)))
    out.append(PagedShapes("infer bench serving (book model)", max(setup(cuda, quick=False).serve_batches),
                           book.n_head, book.n_kv_head, book.head_dim, BLOCK_SIZE,
                           tuple(range(1, -(-book.context_length // BLOCK_SIZE) + 1))))
    return out + paged_decode_shapes("paged decode bench")


def paged_decode_shapes(label: str, *, heads: Sequence[tuple[int, int]] = PAGED_HEADS, head_dim: int = PAGED_HEAD_DIM,
                        batches: Sequence[int] = PAGED_BATCHES, context: int = PAGED_CONTEXT,
                        block_size: int = BLOCK_SIZE) -> list[PagedShapes]:
    """The decode steps `bench_paged_decode` runs with the same keywords, for the ahead-of-time compile: one
    per ((H, H_kv), B), every row's table ⌈context / block_size⌉ blocks wide."""
    return [PagedShapes(label, B, H, H_kv, head_dim, block_size, (-(-context // block_size),))
            for (H, H_kv), B in itertools.product(heads, batches)]


def _models(device: torch.device, quick: bool, dtype: torch.dtype) -> dict[str, tuple[GPT, GPT | None]]:
    """name → (model, draft or None)."""
    from lab.distill import gpt_student

    seed_everything(0)
    if quick:
        tiny = GPT(GPTConfig(vocab_size=256, context_length=64, d_model=64, n_layer=2, n_head=4, n_kv_head=2,
                             d_ff=128)).to(device=device, dtype=dtype).eval()
        return {"tiny (random)": (tiny, gpt_student(tiny, 1))}
    from lab.infer.draft import load_draft
    from lab.models import load_pretrained_lm

    models = {"pydoc-gpt": (load_pretrained_lm("lab").to(device=device, dtype=dtype),
                            load_draft().to(device=device, dtype=dtype))}
    if device.type == "cuda":
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)           # initialise in bf16 directly: no fp32 copy of 6B parameters
        try:
            with torch.device(device):
                models["llama-2-7b shape (random weights)"] = (GPT(LLAMA2_7B_SHAPE).eval(), None)
        finally:
            torch.set_default_dtype(default)
    return models


def source_text(model: GPT) -> torch.Tensor:
    """1-D int64 tokens that prompts and traces are cut from: the whole test split for the book's model (its
    vocabulary; windows at random starts fall anywhere in its documents), 4096 random ids for any other model."""
    if model.config.vocab_size == 8192 and model.config.context_length == 256:
        from lab.data import tokenize_split
        from lab.models import load_tokenizer

        return tokenize_split("test", load_tokenizer())
    return torch.randint(0, model.config.vocab_size, (4096,), generator=torch.Generator().manual_seed(0))


def _prompts(text: torch.Tensor, n: int, length: int, device: torch.device) -> torch.Tensor:
    """(n, length) prompts: windows of ``text`` at seeded random starts."""
    starts = torch.randint(0, len(text) - length, (n,), generator=torch.Generator().manual_seed(0))
    return torch.stack([text[s:s + length] for s in starts.tolist()]).to(device)


def _decode_row(config: str, variant: GPT, draft: GPT | None, prompt: torch.Tensor, graph: bool,
                device: torch.device, s: Setup, ceilings: dict, kv_bytes: int) -> tuple[dict, torch.Tensor]:
    """Decode ms per step of ``variant`` in ``config`` on ``prompt`` (B, T₀), its speed of light (KV cache
    of ``kv_bytes`` per element), and its greedy output (B, T₀ + n) for the agreement check."""
    B = len(prompt)

    def run(n: int) -> torch.Tensor:
        if config == "speculative":
            return speculative_generate(variant, draft, prompt[0], n, k=s.draft_k, cuda_graph=graph)
        return generate(variant, prompt, n, kv_cache=config != "no_cache", cuda_graph=graph)

    row = {}
    if config == "speculative":
        result = run(s.new_tokens)
        output = result.tokens[None]
        row.update(draft_k=s.draft_k, acceptance_rate=result.acceptance_rate,
                   tokens_per_target_step=result.tokens_per_step, draft_weight_bytes=weight_bytes(draft))
    else:
        output = run(s.new_tokens)
    half = s.new_tokens // 2
    t_n = time_ms(lambda: run(s.new_tokens), device, s.repeats)
    t_half = time_ms(lambda: run(half), device, s.repeats)
    step_ms = max(t_n - t_half, 1e-9) / (s.new_tokens - half)
    cost = decode_step_cost(variant, B, s.prompt_len + half, kv_cache=config != "no_cache", kv_dtype_bytes=kv_bytes)
    sol = speed_of_light_ms(cost, ceilings["bandwidth"], ceilings["peak_flops"])
    row.update(generate_ms=t_n, generate_half_ms=t_half, ms_per_step=step_ms,
               ms_per_token=step_ms / B, tokens_per_s=B * 1e3 / step_ms, weight_bytes=weight_bytes(variant),
               bytes_per_step=cost["bytes"], flops_per_step=cost["flops"], sol_memory_ms=sol["memory_ms"],
               sol_compute_ms=sol["compute_ms"], sol_ms=sol["ms"], sol_tokens_per_s=B * 1e3 / sol["ms"],
               fraction_of_sol=sol["ms"] / step_ms)
    return row, output


def bench_model(name: str, model: GPT, draft: GPT | None, text: torch.Tensor, device: torch.device, s: Setup,
                ceilings: dict, progress: bool) -> list[dict]:
    """One row per (configuration, batch) of ``model``: decode ms per step, tokens/s and the speed of light
    (`_decode_row`), and the agreement of its greedy tokens with the eager KV-cache run."""
    cuda = device.type == "cuda"
    dtype = next(model.parameters()).dtype
    prompts = _prompts(text, max(s.batches), s.prompt_len, device)
    configs = [c for c in CONFIGS if (cuda or c != "kv_cache_cuda_graph") and (draft is not None or c != "speculative")]
    rows, outputs = [], {}
    bar = tqdm(total=len(configs) * len(s.batches), desc=f"decode: {name}", disable=not progress)
    for config in configs:
        variant = quantized(model, config, dtype) if config.startswith("int") else model
        graph = cuda and config not in ("no_cache", "kv_cache")
        for B in s.batches:
            bar.update()
            if config == "speculative" and B != 1:
                continue
            row, outputs[config, B] = _decode_row(config, variant, draft, prompts[:B], graph, device, s, ceilings,
                                                  torch.finfo(dtype).bits // 8)
            rows.append({"model": name, "config": config, "batch": B, "prompt_len": s.prompt_len,
                         "new_tokens": s.new_tokens, **row})
        if variant is not model:
            del variant
            if cuda:
                torch.cuda.empty_cache()
    bar.close()
    for row in rows:  # fraction of greedy tokens equal to the eager KV-cache run of the same batch
        same = outputs[row["config"], row["batch"]] == outputs["kv_cache", row["batch"]]
        row["agreement"] = same.float().mean().item()
    return rows


def bench_serving(model: GPT, text: torch.Tensor, device: torch.device, s: Setup, progress: bool) -> list[dict]:
    """Static vs continuous batching of one mixed-length trace (prompts cut from ``text``) per max batch size."""
    longest = model.config.context_length // 4
    trace = synthetic_trace(text, s.trace_requests, (4, longest), (4, longest), seed=0)
    rows = []
    for B in s.serve_batches:
        for policy in ("static", "continuous"):
            serve(model, trace[:2], B, policy)       # warm-up (kernels, allocator)
            result = serve(model, trace, B, policy, progress=progress)
            rows.append({"max_batch": B, "policy": policy, "requests": len(trace),
                         "generated_tokens": result.generated_tokens, "decode_steps": result.decode_steps,
                         "utilization": result.utilization, "preemptions": result.preemptions,
                         "seconds": result.seconds, "tokens_per_s": result.tokens_per_s})
    return rows


def run(device: torch.device, quick: bool = False, progress: bool = True, short: bool = False) -> dict:
    """Suite ``infer``: the ceilings, every model × configuration × batch, and the serving comparison;
    ``short``: the GPU run's form (`setup`)."""
    s = setup(device, quick, short)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    label = ("CUDA, bf16: eager and CUDA-graph decode, int8/int4 Triton kernels, speculative decoding; speed of "
             "light from this GPU's measured copy bandwidth and bf16 matmul rate" if device.type == "cuda" else
             "CPU, fp32: eager decode only (no CUDA graphs; the int8/int4 layers run their PyTorch paths, which "
             "dequantize, so they are slower than fp32 here); speed of light from this CPU's measured copy "
             "bandwidth and fp32 matmul rate")
    ceilings = measure_ceilings(device, dtype, quick)
    models = _models(device, quick, dtype)
    out = {"label": label, "setup": s.__dict__, "dtype": str(dtype).removeprefix("torch."), "ceilings": ceilings,
           "decode": []}
    with torch.no_grad():
        texts = {name: source_text(model) for name, (model, _) in models.items()}
        for name, (model, draft) in models.items():
            out["decode"] += bench_model(name, model, draft, texts[name], device, s, ceilings, progress)
        book = next(iter(models))
        out["serving"] = bench_serving(models[book][0], texts[book], device, s, progress)
    return out


# ---- the paged decode-attention kernel alone, against the copy ceiling (the GPU run's ``kernels`` stage):
# it reads the K and V of every cached position once (≈ 2 FLOPs per byte), so its ceiling is the copy bandwidth.

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
                       heads: Sequence[tuple[int, int]] = PAGED_HEADS, head_dim: int = PAGED_HEAD_DIM,
                       batches: Sequence[int] = PAGED_BATCHES, context: int = PAGED_CONTEXT,
                       block_size: int = BLOCK_SIZE,
                       bandwidth: float | None = None) -> list[dict]:
    """Decode attention over a paged cache, one row per (H, H_kv, B) and kernel version: v1 and v2
    (flash-decoding) of `lab.kernels.paged_attention` on a GPU, the PyTorch path on the CPU; each checked
    against float64, then timed.

    Every row has ``context`` cached positions in blocks of ``block_size`` (`PagedKVCache`'s default),
    scattered over the pool in a random order as a real allocator leaves them. ``kv_bytes`` = K and V
    read, 2·B·H_kv·D·b_e·⌈context / block_size⌉·block_size; ``bytes`` adds q and o; with the copy
    ``bandwidth`` (bytes/s, read + write, `measure_ceilings`) each row gets bytes/s over it.
    """
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    from lab.kernels.paged_attention import paged_attention_decode, paged_attention_decode_v2

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
