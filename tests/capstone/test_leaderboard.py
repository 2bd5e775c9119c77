"""The leaderboard suite (lab.capstone.leaderboard) on a tiny random GPT, and the committed CPU record."""

import copy
import json
import math

import numpy as np
import pytest
import torch

from lab.capstone.leaderboard import (build, decode_ms_per_token, kept_weights, leaderboard, matmul_time, round_to_bf16,
                                      seed_contexts, stored_bytes, stored_tensors)
from lab.capstone.pareto import constraint_table, dominance, leaderboard_frame, pareto_front
from lab.capstone.routes import ROUTES, VERSUS, FP4Linear, Settings
from lab.formats.fp4 import dequantize_fp4
from lab.kernels.fp4_gemv import FORMATS
from lab.params.safetensors_io import load_safetensors
from lab.perplexity import EvalSample
from lab.quant.affine import dequantize, rtn_quantize
from lab.quant.linear import decoder_linear_names
from lab.quant.mx import mx_quantize_model, quantize_mx

ROUTES_HERE = tuple(r for r in ROUTES if not r.name.startswith("draft"))   # the draft is the book's checkpoint
TINY = Settings(calib_samples=2, calib_len=16, group_size=32, student_layers=1, student_steps=2,
                student_batch=2, student_seq=16, decode_prompt=4, decode_tokens=3, repeats=1, seeds=(0, 1, 2))


def random_sample(n_windows: int = 12, context: int = 8, window: int = 24) -> EvalSample:
    """Windows of random ids in 6 "documents", two windows each."""
    gen = torch.Generator().manual_seed(0)
    inputs = tuple(torch.randint(0, 61, (context + window,), generator=gen) for _ in range(n_windows))
    return EvalSample(inputs, (context,) * n_windows, torch.cat([x[context:] for x in inputs]),
                      torch.arange(n_windows).repeat_interleave(window) // 2)


def train_ids() -> torch.Tensor:
    return torch.randint(0, 61, (2000,), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def rows(tiny_gpt):
    model = tiny_gpt(context_length=256, d_ff=64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = leaderboard(model, random_sample(), train_ids(), TINY, routes=ROUTES_HERE, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the model was changed"
    return {row["route"]: row for row in result}


def test_every_route_has_a_stamped_row_with_its_interval(rows):
    assert list(rows) == [route.name for route in ROUTES_HERE]
    for row in rows.values():
        assert {"commit", "device", "command", "bytes", "params", "delta_log_ppl", "delta_ppl_pct"} <= row.keys()
        mid, low, high = row["delta_log_ppl"]
        assert low <= mid <= high
        assert row["delta_ppl_pct"] == pytest.approx([100 * math.expm1(d) for d in row["delta_log_ppl"]])
        assert math.isclose(row["perplexity"], rows["dense bf16"]["perplexity"] * math.exp(mid), rel_tol=1e-9)
        assert row["command"].startswith("python -m lab.bench leaderboard")
        assert row["decode_ms_per_token"] > 0 and row["n_documents"] == 6
        assert row["verdict"] in ("lower", "higher", "equivalent", "inconclusive", "reference")
        assert row["n_seeds"] == (3 if next(r for r in ROUTES if r.name == row["route"]).seeded else 1)
    assert rows["dense bf16"]["delta_log_ppl"] == [0.0, 0.0, 0.0] and rows["dense bf16"]["verdict"] == "reference"
    assert rows["GPTQ int3 g64"]["read_bytes"] > rows["GPTQ int3 g64"]["bytes"]      # int3 runs dequantized
    assert rows["GPTQ int4 g64"]["read_bytes"] == rows["GPTQ int4 g64"]["bytes"]     # int4 has its kernel


def test_bytes_and_weights_follow_the_storage(rows):
    dense = rows["dense bf16"]
    assert rows["SparseGPT 50%"]["bytes"] == dense["bytes"]                  # unstructured: stored dense
    assert rows["GPTQ int4 g64"]["bytes"] == rows["RTN int4 g64"]["bytes"] < dense["bytes"]
    assert rows["GPTQ int3 g64"]["bytes"] < rows["GPTQ int4 g64"]["bytes"]
    assert rows["2:4 + int4"]["bytes"] < rows["SparseGPT 2:4"]["bytes"] < dense["bytes"]
    assert rows["student + GPTQ int4"]["bytes"] < rows["student 3 layers"]["bytes"] < dense["bytes"]
    assert rows["GPTQ int3 g64"]["params"] == rows["GPTQ int4 g64"]["params"] == dense["params"]
    linear = 2 * (32 * 32 + 2 * 16 * 32 + 32 * 32 + 3 * 32 * 64)              # the tiny model's decoder linears
    assert dense["params"] - rows["SparseGPT 2:4"]["params"] == linear // 2
    assert rows["SparseGPT 50%"]["params"] == rows["SparseGPT 2:4"]["params"]


def test_fp4_routes_hold_the_weights_and_bytes_of_mx_quantize_model(tiny_gpt):
    ctx = seed_contexts(tiny_gpt(context_length=256, d_ff=64), train_ids(), TINY, "cpu")[0]
    ids = torch.randint(0, 61, (2, 12), generator=torch.Generator().manual_seed(2))
    for fmt in ("mxfp4", "nvfp4"):
        model, codes = build(next(r for r in ROUTES if r.name == fmt), ctx)
        reference, weight_bytes = mx_quantize_model(copy.deepcopy(ctx["dense"]), fmt)
        names = decoder_linear_names(model)
        assert codes == {} and all(isinstance(model.get_submodule(n), FP4Linear) for n in names)
        for name in names:                                               # Ŵ exactly, loaded back from the bytes
            layer = model.get_submodule(name)
            W_hat = dequantize_fp4(layer.packed, layer.scales, layer.global_scale, FORMATS[fmt][1])
            assert torch.equal(W_hat, reference.get_submodule(name).weight)
        stored = stored_tensors(model, {})
        fp4_bytes = sum(t.numel() * t.element_size() for k, t in stored.items() if k.rpartition(".")[0] in names)
        assert fp4_bytes == weight_bytes                  # elements, block scales and NVFP4's s_g, nothing else
        assert torch.equal(stored["embed_tokens.weight"], ctx["dense"].embed_tokens.weight.to(torch.bfloat16))
        torch.testing.assert_close(model(ids), reference(ids), rtol=1e-5, atol=1e-5)


def test_fp4_linear_takes_the_dense_path_above_the_gemv_rows(monkeypatch):
    """With Triton's path on (the interpreter here, a GPU in a run), more rows than the GEMV kernel takes (a
    prefill) multiply Ŵ dequantized once: the product of the reference."""
    W = torch.randn(24, 64, generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(1))          # 21 rows > MAX_M = 16
    for fmt in ("mxfp4", "nvfp4"):
        layer = FP4Linear(quantize_mx(W, fmt))
        expected = x @ quantize_mx(W, fmt).dequantize().T
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        monkeypatch.delenv("TRITON_INTERPRET")
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_fp4_rows_count_their_scales_and_compare_with_int4(rows):
    mx, nv = rows["mxfp4"], rows["nvfp4"]
    assert mx["bytes"] < nv["bytes"] < rows["RTN int4 g64"]["bytes"]      # 4.25, 4.5 and (g = 32 here) 5 bits
    assert mx["read_bytes"] == mx["bytes"] and nv["read_bytes"] == nv["bytes"]     # the FP4 kernel reads them
    assert mx["params"] == nv["params"] == rows["dense bf16"]["params"]
    assert mx["matmul_time_vs_dense"] == nv["matmul_time_vs_dense"] == 1.0          # widened to 16 bits
    for row in (mx, nv):
        assert not (row["calibration"] or row["training"]) and row["n_seeds"] == 1
        assert set(row["versus"]) == set(VERSUS[row["route"]])
        for other, cmp in row["versus"].items():       # paired on the same tokens: the Δs against dense subtract
            difference = row["delta_log_ppl"][0] - rows[other]["delta_log_ppl"][0]
            assert cmp["delta_log_ppl"] == pytest.approx(difference, rel=1e-9, abs=1e-12)
            assert cmp["ci_low"] <= cmp["delta_log_ppl"] <= cmp["ci_high"]
            assert cmp["n_seeds"] == rows[other]["n_seeds"] and cmp["n_documents"] == 6
    assert all(row["versus"] == {} for name, row in rows.items() if name not in VERSUS)


def test_stored_tensors_share_once_and_pack_codes(tiny_gpt, tmp_path):
    model = round_to_bf16(tiny_gpt())
    tensors = stored_tensors(model, {})
    assert model.lm_head.weight.data_ptr() == model.embed_tokens.weight.data_ptr()
    assert ("lm_head.weight" in tensors) != ("embed_tokens.weight" in tensors)           # the tied matrix once
    assert all(t.dtype == torch.bfloat16 for t in tensors.values() if t.is_floating_point())
    name = "layers.0.mlp.up_proj.weight"
    qt = rtn_quantize(model.get_parameter(name), 3, 16)
    packed = stored_tensors(model, {name: qt})
    assert packed[name + ".codes"].numel() == math.ceil(48 * 32 * 3 / 8)    # 3 bits per code, 32 per row
    assert name not in packed and packed[name + ".zero_point"].dtype == torch.uint8
    path = tmp_path / "m.safetensors"
    from lab.params.safetensors_io import save_safetensors
    save_safetensors(tensors, path, checksum=False)
    assert stored_bytes(tensors) == path.stat().st_size
    loaded = load_safetensors(path)
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    assert kept_weights(model, {name: qt}) == kept_weights(model, {})            # codes: all weights kept
    assert dequantize(qt).shape == (48, 32)


def test_round_to_bf16_is_idempotent_and_exact(tiny_gpt):
    model = round_to_bf16(tiny_gpt())
    w = model.layers[0].attn.q_proj.weight
    assert torch.equal(w, w.to(torch.bfloat16).float()) and w.dtype == torch.float32


def test_decode_timing_needs_two_tokens(tiny_gpt):
    with pytest.raises(ValueError, match="n must be >= 2"):
        decode_ms_per_token(tiny_gpt(), torch.zeros(1, 2, dtype=torch.int64), 1, torch.device("cpu"), 1)


def test_committed_cpu_record(repo_root):
    record = json.loads((repo_root / "results" / "leaderboard_cpu.json").read_text())
    assert not record["quick"] and record["suite"] == "leaderboard"
    assert len(record["rows"]) >= 9
    by_route = {row["route"]: row for row in record["rows"]}
    for fmt, others in VERSUS.items():           # the FP4 rows, each compared with int4 on groups of 64
        assert set(by_route[fmt]["versus"]) == set(others) and by_route[fmt]["read_bytes"] == by_route[fmt]["bytes"]
    assert by_route["mxfp4"]["bytes"] < by_route["nvfp4"]["bytes"] < by_route["dense bf16"]["bytes"]
    for row in record["rows"]:
        assert row["commit"] and row["device"] and row["command"].startswith("python -m lab.bench leaderboard")
        assert row["bytes"] > 0 and row["params"] > 0
        low, high = row["delta_log_ppl"][1:]
        assert low <= row["delta_log_ppl"][0] <= high


def test_predicted_matmul_time(rows, tiny_gpt):
    model = tiny_gpt()
    linears = 2 * (32 * 32 + 2 * 16 * 32 + 32 * 32 + 3 * 32 * 48)
    assert matmul_time(model) == linears + 61 * 32                           # the head runs in bf16 too
    assert rows["dense bf16"]["matmul_time_vs_dense"] == 1.0
    dense_time = 2 * (32 * 32 + 2 * 16 * 32 + 32 * 32 + 3 * 32 * 64) + 61 * 32
    half = 2 * (32 * 32 + 2 * 16 * 32 + 32 * 32 + 3 * 32 * 64) / 2
    for route in ("W8A8 SmoothQuant", "SparseGPT 2:4", "2:4 + int4"):     # int8 / sparse tensor cores: 2x
        assert rows[route]["matmul_time_vs_dense"] == pytest.approx((half + 61 * 32) / dense_time)
    assert rows["GPTQ int4 g64"]["matmul_time_vs_dense"] == 1.0             # weight-only: bf16 matmuls


def _row(route, nbytes, delta, calibration=False, training=False, matmul=1.0, read=None):
    pct = [100 * math.expm1(d) for d in delta]
    return {"route": route, "bytes": nbytes, "read_bytes": read or nbytes, "delta_log_ppl": delta,
            "delta_ppl_pct": pct, "calibration": calibration, "training": training, "matmul_time_vs_dense": matmul,
            "dominated_by": []}


def test_constraint_table_picks_by_bytes_read_within_the_budget():
    rows = [_row("dense", 100, [0.0, 0.0, 0.0]), _row("rtn", 50, [0.02, 0.01, 0.03]),
            _row("gptq", 50, [0.01, 0.0, 0.02], calibration=True),
            _row("int3", 40, [0.015, 0.0, 0.02], calibration=True, read=90),   # stored small, read in bf16
            _row("w8a8", 70, [0.001, 0.0, 0.002], calibration=True, matmul=0.6),
            _row("student", 30, [0.5, 0.4, 0.6], training=True, matmul=0.5)]
    table = {t["constraint"]: t["route"] for t in constraint_table(rows, budget_pct=5.0)}
    assert table == {"memory-bound decode (batch 1)": "gptq", "batch serving (compute-bound)": "w8a8",
                     "no calibration data": "rtn", "no training budget": "gptq"}
    loose = {t["constraint"]: t["route"] for t in constraint_table(rows, budget_pct=100.0)}
    assert loose["memory-bound decode (batch 1)"] == "student" and loose["no training budget"] == "gptq"
    strict = constraint_table(rows, budget_pct=0.0)
    assert [t["route"] for t in strict] == ["dense", "dense", "dense", "dense"]
    with pytest.raises(ValueError, match="budget_pct must be a number >= 0"):
        constraint_table(rows, budget_pct=-1)


def test_dominance_needs_fewer_bytes_and_an_interval_wholly_below():
    """Three routes on 40 documents: "small" is as good as "big" within noise (not dominating it, though its
    point estimate is lower); "tiny" is clearly worse than both; "better" at big's bytes is clearly better."""
    gen = np.random.default_rng(0)
    documents = torch.arange(4000) // 100
    base = torch.from_numpy(gen.gamma(2.0, 1.5, size=4000))
    noise = lambda sd: torch.from_numpy(gen.normal(0.0, sd, size=4000))
    losses = {"big": base[None], "small": (base - 0.0005 + noise(0.2))[None], "tiny": (base + 0.3 + noise(0.1))[None],
              "better": torch.stack([base - 0.2 + noise(0.1), base - 0.21 + noise(0.1), base - 0.19 + noise(0.1)])}
    rows = [{"route": "big", "bytes": 100}, {"route": "small", "bytes": 50}, {"route": "tiny", "bytes": 10},
            {"route": "better", "bytes": 100}]
    dominated = dominance(rows, [losses[r["route"]] for r in rows], documents)
    assert dominated == [["better"], [], [], []]
    rows = [dict(r, dominated_by=d) for r, d in zip(rows, dominated)]
    assert pareto_front(rows) == ["small", "tiny", "better"]


def test_leaderboard_frame_marks_gpu_figures_pending_without_a_gpu_record(rows):
    listed = list(rows.values())
    frame = leaderboard_frame(listed)
    assert list(frame.index) == list(rows) and (frame["GPU tokens/s (× SOL)"] == "pending").all()
    assert frame.loc["dense bf16", "verdict"] == "reference" and frame.loc["dense bf16", "× dense"] == 1.0
    assert (frame["seeds"] >= 1).all() and (frame["MB read/token"] >= frame["MB"]).all()
    gpu = [{"route": "GPTQ int4 g64", "tokens_per_s": 1234.4, "fraction_of_sol": 0.25}]
    frame = leaderboard_frame(listed, gpu)
    assert frame.loc["GPTQ int4 g64", "GPU tokens/s (× SOL)"] == "1,234 (0.25)"
    assert frame.loc["dense bf16", "GPU tokens/s (× SOL)"] == "pending"
