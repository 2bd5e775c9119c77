"""lab.infer.roofline (bytes and FLOPs of a decode step), the ``infer`` suite of lab.bench (quick, CPU), its
ceilings, and the paged decode-attention benchmark.

References: parameter counts in closed form (`lab.params.counting`), the chapter-1 KV-cache formula and
Llama-2-7B's published parameter count.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from lab.bench.__main__ import main
from lab.infer.roofline import (decode_step_cost, decoder_linear_bytes_at, kv_bytes_per_position, matmul_params,
                                speed_of_light_ms, weight_bytes)
from lab.infer.suite import CONFIGS, LLAMA2_7B_SHAPE, LLAMA2_70B_SHAPE, quantized
from lab.models import GPT, GPTConfig
from lab.params.counting import gpt_param_count
from lab.params.memory import kv_cache_bytes

CFG = GPTConfig(vocab_size=300, context_length=64, d_model=64, n_layer=2, n_head=4, n_kv_head=2, d_ff=128)


@pytest.fixture(scope="module")
def tiny(tiny_gpt) -> GPT:
    return tiny_gpt(**CFG.to_dict())


def test_weight_bytes_and_matmul_params(tiny):
    assert weight_bytes(tiny) == 4 * gpt_param_count(CFG)                      # tied: the embedding is the head
    assert weight_bytes(tiny.to(torch.bfloat16)) == 2 * gpt_param_count(CFG)
    tiny.float()
    untied = GPT(GPTConfig(**{**CFG.to_dict(), "tie_embeddings": False}))
    assert weight_bytes(untied) == 4 * (untied.num_parameters() - 300 * 64)   # the input embedding is only gathered
    C, F, D = 64, 128, 16
    per_layer = C * 4 * D + 2 * C * 2 * D + 4 * D * C + 3 * C * F
    assert matmul_params(tiny) == 2 * per_layer + C * 300


def test_quantized_weight_bytes(tiny):
    int4 = quantized(tiny, "int4_weight_only", torch.float32)
    int8 = quantized(tiny, "int8_w8a8", torch.float32)
    linears = sum(m.weight.numel() for n, m in tiny.named_modules() if n.startswith("layers.") and
                  isinstance(m, torch.nn.Linear))
    rest = gpt_param_count(CFG) - linears
    groups = linears // 64                                  # g = 64, the largest of 128/64/32 dividing C and F
    assert weight_bytes(int4) == 4 * rest + linears // 2 + 2 * 4 * groups      # codes + fp32 scales and zeros
    rows = sum(m.out_features for n, m in tiny.named_modules() if n.startswith("layers.") and
               isinstance(m, torch.nn.Linear))
    assert weight_bytes(int8) == 4 * rest + linears + 4 * rows                  # int8 codes + a scale per row
    assert matmul_params(int4) == matmul_params(int8) == matmul_params(tiny)


def test_decode_step_cost_formulas(tiny):
    B, S = 3, 40
    cached = decode_step_cost(tiny, B, S, kv_dtype_bytes=4)
    assert cached["bytes"] == weight_bytes(tiny) + kv_cache_bytes(CFG, B, S, torch.float32)
    assert kv_bytes_per_position(tiny, 2) == 2 * 2 * 2 * 16 * 2
    attention = 4 * 2 * 4 * 16 * S * B
    assert cached["flops"] == 2 * matmul_params(tiny) * B + attention
    uncached = decode_step_cost(tiny, B, S, kv_cache=False)
    assert uncached["flops"] == 2 * matmul_params(tiny) * B * S + attention * S / 2
    sol = speed_of_light_ms({"bytes": 3e9, "flops": 1e12}, 3e12, 800e12)
    assert sol == {"memory_ms": 1.0, "compute_ms": 1.25, "ms": 1.25}
    with pytest.raises(ValueError, match="batch and context"):
        decode_step_cost(tiny, 0, 4)


def test_quantized_copy_leaves_the_model_alone(tiny):
    before = copy.deepcopy(tiny.state_dict())
    quantized(tiny, "int4_weight_only", torch.float32)
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    argv = ["infer", "--quick", "--out", str(out), "--device", "cpu", "--no-progress"]
    path = main(argv)
    return path, json.loads(path.read_text())


def test_infer_record(record):
    path, rec = record
    assert path.name == "infer_cpu_quick.json" and rec["suite"] == "infer" and rec["device_type"] == "cpu"
    rows = rec["decode"]
    cpu_configs = [c for c in CONFIGS if c != "kv_cache_cuda_graph"]
    assert sorted({r["config"] for r in rows}) == sorted(cpu_configs)
    assert {(r["config"], r["batch"]) for r in rows} == \
        {(c, b) for c in cpu_configs for b in (1, 2) if c != "speculative" or b == 1}
    for r in rows:
        assert 0 < r["ms_per_step"] <= r["generate_ms"]          # one step is part of a whole generate call
        assert math.isfinite(r["tokens_per_s"]) and r["tokens_per_s"] > 0 and r["fraction_of_sol"] > 0
        assert r["sol_ms"] >= r["sol_memory_ms"] > 0 and r["sol_ms"] >= r["sol_compute_ms"] > 0
    by = {(r["config"], r["batch"]): r for r in rows}
    for b in (1, 2):  # without a cache a step recomputes every position: more FLOPs, a later ceiling
        assert by["no_cache", b]["flops_per_step"] > by["kv_cache", b]["flops_per_step"]
    assert by["kv_cache", 2]["bytes_per_step"] > by["kv_cache", 1]["bytes_per_step"]  # each row reads its own cache
    for b in (1, 2):        # greedy: the uncached and the eager cached runs agree token for token
        assert by["no_cache", b]["agreement"] == by["kv_cache", b]["agreement"] == 1.0
    assert by["speculative", 1]["agreement"] == 1.0 and 0 <= by["speculative", 1]["acceptance_rate"] <= 1
    assert by["int4_weight_only", 1]["weight_bytes"] < by["kv_cache", 1]["weight_bytes"]
    assert rec["ceilings"]["bandwidth"] > 0 and rec["ceilings"]["peak_flops"] > 0
    serving = {(r["policy"], r["max_batch"]): r for r in rec["serving"]}
    assert serving["continuous", 2]["generated_tokens"] == serving["static", 2]["generated_tokens"]
    assert serving["continuous", 2]["decode_steps"] <= serving["static", 2]["decode_steps"]


def test_storage_formats_priced_without_building_them(tiny):
    bf16 = copy.deepcopy(tiny).to(torch.bfloat16)
    assert decoder_linear_bytes_at(bf16, 16) == weight_bytes(bf16)
    int4 = quantized(bf16, "int4_weight_only", torch.bfloat16)                  # g = 64, bf16 scales and zeros
    assert decoder_linear_bytes_at(bf16, 4 + 32 / 64) == weight_bytes(int4)
    with torch.device("meta"):                                                  # sizes only: a 7B shape costs nothing
        big = GPT(GPTConfig(vocab_size=32000, context_length=4096, d_model=4096, n_layer=32, n_head=32,
                            n_kv_head=8, d_ff=11008, tie_embeddings=False)).to(torch.bfloat16)
    linear = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 11008)
    assert weight_bytes(big) == 2 * (linear + 32000 * 4096 + 32 * 2 * 4096 + 4096)
    cost = decode_step_cost(big, 1, 2048, weights=decoder_linear_bytes_at(big, 4.25))
    assert cost["bytes"] == weight_bytes(big) - 2 * linear + linear * 4.25 / 8 + 2048 * 2 * 32 * 1024 * 2


def test_llama2_7b_shape_is_llama_2_7b():
    """Llama-2-7B: 6,738,415,616 parameters (Touvron et al., 2023; the Hugging Face checkpoint), 32 kv heads."""
    assert gpt_param_count(LLAMA2_7B_SHAPE) == 6_738_415_616
    assert LLAMA2_7B_SHAPE.n_kv_head == LLAMA2_7B_SHAPE.n_head == 32 and not LLAMA2_7B_SHAPE.tie_embeddings


def test_llama2_70b_shape_is_llama_2_70b():
    """Llama-2-70B: 68,976,648,192 parameters (the Hugging Face checkpoint), 8 kv heads of D = 128 for 64
    query heads; the plan of chapter 5 uses the same Ψ."""
    from lab.parallel.formulas import LLAMA2_70B

    assert gpt_param_count(LLAMA2_70B_SHAPE) == 68_976_648_192
    assert gpt_param_count(LLAMA2_70B_SHAPE) == pytest.approx(LLAMA2_70B.n_params, rel=1e-4)
    assert (LLAMA2_70B_SHAPE.n_head, LLAMA2_70B_SHAPE.n_kv_head, LLAMA2_70B_SHAPE.head_dim) == (64, 8, 128)


def test_paged_decode_bench_checks_then_times(monkeypatch):
    from lab.infer.suite import bench_paged_decode
    from lab.kernels import paged_attention

    kwargs = dict(heads=((4, 2), (4, 4)), head_dim=16, batches=(1, 3), context=40, block_size=16)
    rows = bench_paged_decode(torch.device("cpu"), quick=True, progress=False, bandwidth=1e10, **kwargs)
    assert [(r["H"], r["H_kv"], r["B"], r["version"]) for r in rows] == [
        (H, H_kv, B, v) for H, H_kv in ((4, 2), (4, 4)) for B in (1, 3) for v in ("v1", "v2")]
    for r in rows:
        assert r["max_rel_err"] < 1e-5 and r["ms"] > 0 and r["path"] == "torch"
        assert r["kv_bytes"] == 2 * r["B"] * r["H_kv"] * 16 * 4 * 48            # 40 positions use 3 blocks of 16
        assert r["fraction_of_copy_bandwidth"] > 0
    monkeypatch.setattr(paged_attention, "paged_attention_decode", lambda q, *args, **kw: torch.zeros_like(q))
    monkeypatch.setattr(paged_attention, "paged_attention_decode_v2", lambda q, *args, **kw: torch.zeros_like(q))
    broken = bench_paged_decode(torch.device("cpu"), quick=True, progress=False, **kwargs)
    assert all(r["ms"] is None and "exceeds" in r["wrong"] and "gb_per_s" not in r for r in broken)
