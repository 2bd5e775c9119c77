"""lab.parallel.context_parallel: ring attention and its all-gather twin against full causal attention in float64,
forward and backward, on 3 gloo ranks and on a 2-rank subgroup of them (odd and even N; group ranks that are not
the global ones), both layouts, grouped-query heads; the bytes each sends against `context_parallel_elements`; the
context-parallel GPT against the unsplit model; the causal work per rank and step. ``job_context_parallel`` runs on
every rank of this file's one launch; the `cp` row of the strategy table trains in conftest's launch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.parallel.comm import CommCounter
from lab.parallel.context_parallel import (LAYOUTS, allgather_attention, context_parallel_gpt, ring_attention,
                                           ring_attention_work, sequence_positions)
from lab.parallel.formulas import context_parallel_elements
from lab.parallel.launch import launch
from lab.parallel.strategies import lm_loss
from tests.parallel.test_strategies import batch, fresh_gpt, grads_by_name, value_errors

WORLD, SUBGROUP = 3, [1, 2]
B, H, H_KV, T, D = 2, 4, 2, 24, 8                       # T divisible by 2N for N = 2 and 3
T_GPT = 12                                              # of the 16 positions of `batch`: 2N divides it
METHODS = {"ring": ring_attention, "allgather": allgather_attention}
FEW = settings(max_examples=40, deadline=None)


def qkvw(dtype=torch.float64, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Full-sequence q (B, H, T, D), k, v (B, H_kv, T, D) and the weights w of the loss Σ w ⊙ out."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, T, D, generator=g, dtype=dtype) for h in (H, H_KV, H_KV, H))


def reference() -> tuple[torch.Tensor, ...]:
    """Full causal attention of `qkvw` (H_kv heads repeated) and the gradients of Σ w ⊙ out: out, dq, dk, dv."""
    q, k, v, w = qkvw()
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k.repeat_interleave(H // H_KV, 1), v.repeat_interleave(H // H_KV, 1),
                                         is_causal=True)
    (out * w).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


def _attend(method: str, layout: str, group) -> dict:
    """This rank's part of `qkvw` through ``method``: output, gradients and the counted traffic each way."""
    n, rank = dist.get_world_size(group), dist.get_rank(group)
    q, k, v, w = qkvw()
    pos = sequence_positions(T, n, rank, layout)
    q, k, v = (t[:, :, pos].clone().requires_grad_() for t in (q, k, v))
    with CommCounter() as fwd:
        out = METHODS[method](q, k, v, group, layout)
    with CommCounter() as bwd:
        (out * w[:, :, pos]).sum().backward()
    return {"pos": pos, "out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad,
            "comm": (fwd.summary(), bwd.summary())}


def _gpt_on_ranks() -> dict:
    """The zig-zag context-parallel GPT on this rank's positions: logits, the loss on them and its gradients."""
    x, y = (t[:, :T_GPT] for t in batch())
    pos = sequence_positions(T_GPT, dist.get_world_size(), dist.get_rank(), "zigzag")
    cp = context_parallel_gpt(fresh_gpt())
    logits = cp(x[:, pos])
    lm_loss(logits, y[:, pos]).backward()
    return {"pos": pos, "logits": logits.detach(), "grads": grads_by_name(cp)}


def _refusals() -> list[str]:
    """Bad input to ring attention on every rank: each rank raises before sending anything."""
    q, k, v, _ = qkvw()
    cases = {"odd": lambda: ring_attention(q[:, :, :3], k[:, :, :3], v[:, :, :3], layout="zigzag"),
             "heads": lambda: allgather_attention(q[:, :3], k, v),
             "long": lambda: context_parallel_gpt(fresh_gpt())(torch.zeros(1, 6, dtype=torch.int64))}
    return value_errors(cases)


def job_context_parallel() -> dict:
    subgroup = dist.new_group(SUBGROUP)                  # every rank takes part in creating it
    runs = {}
    for name, group in (("world", None), ("subgroup", subgroup)):
        if group is None or dist.get_rank() in SUBGROUP:
            runs[name] = {(m, layout): _attend(m, layout, group) for m in METHODS for layout in LAYOUTS}
    return {"runs": runs, "gpt": _gpt_on_ranks(), "bad": _refusals()}


@pytest.fixture(scope="module")
def cp_results():
    return launch(job_context_parallel, WORLD, timeout=60)


def _ranks(cp_results, name: str):
    return [r["runs"][name] for r in cp_results if name in r["runs"]]


@pytest.mark.parametrize("name", ["world", "subgroup"])
def test_ring_and_all_gather_equal_full_causal_attention_forward_and_backward(cp_results, name):
    expected = dict(zip(("out", "dq", "dk", "dv"), reference()))
    ranks = _ranks(cp_results, name)
    assert len(ranks) == (WORLD if name == "world" else len(SUBGROUP))
    for per_rank in ranks:
        for (method, layout), run in per_rank.items():
            for key, full in expected.items():
                torch.testing.assert_close(run[key], full[:, :, run["pos"]], rtol=0, atol=1e-13,
                                           msg=f"{name} {method} {layout} {key}")


@pytest.mark.parametrize("name", ["world", "subgroup"])
def test_bytes_sent_equal_the_formula_and_the_ring_sends_half_again_as_much(cp_results, name):
    for per_rank in _ranks(cp_results, name):
        n = len(_ranks(cp_results, name))
        for (method, layout), run in per_rank.items():
            formula = context_parallel_elements(B, T, H_KV * D, n, method)
            fwd, bwd = (summary["sent_bytes"] / 8 for summary in run["comm"])          # float64 elements
            assert (fwd, bwd) == (formula["forward"], formula["backward"]), (method, layout)
            if method == "ring":   # every send is received once: n−1 blocks forward, n−1 blocks + n−1 gradients back
                ops = run["comm"][1]["ops"]
                assert ops["send"]["calls"] == ops["recv"]["calls"] == 2 * (n - 1)
                assert ops["send"]["payload_bytes"] == ops["recv"]["payload_bytes"]
        ring, gather = (context_parallel_elements(B, T, H_KV * D, n, m) for m in METHODS)
        assert ring["forward"] == gather["forward"] and ring["total"] * 2 == gather["total"] * 3
        assert gather["saved"] == n * ring["saved"]


def test_the_context_parallel_gpt_equals_the_unsplit_model(cp_results):
    model = fresh_gpt()
    x, y = (t[:, :T_GPT] for t in batch())
    logits = model(x)
    lm_loss(logits, y).backward()
    full = grads_by_name(model)
    mean_grads = {name: sum(r["gpt"]["grads"][name] for r in cp_results) / WORLD for name in cp_results[0]["gpt"]["grads"]}
    for r in cp_results:
        torch.testing.assert_close(r["gpt"]["logits"], logits.detach()[:, r["gpt"]["pos"]], rtol=1e-5, atol=1e-5)
    assert {name.removeprefix("model."): g for name, g in mean_grads.items()}.keys() == full.keys()
    for name, g in mean_grads.items():     # the mean over ranks of their own mean losses' gradients (DataParallel's)
        torch.testing.assert_close(g, full[name.removeprefix("model.")], rtol=1e-5, atol=1e-6, msg=name)


def test_bad_input_raises_value_error_on_every_rank(cp_results):
    expected = {"odd": "the sequence length N·(T/N) = 3·3 must be divisible by 6 for layout='zigzag' with N=3",
                "heads": "q must be (B, H, T/N, D) and k, v (B, H_kv, T/N, D) with H_kv dividing H",
                "long": "N·(T/N) = 3·6 in all, which exceeds context_length=16"}
    for messages in (r["bad"] for r in cp_results):
        assert len(messages) == len(expected)
        for line, (name, fragment) in zip(messages, expected.items()):
            assert line.startswith(f"{name}: ") and fragment in line, line


# ---------------------------------------------------------------------------------------------
# no process: positions and work; one process: N = 1 is plain attention
# ---------------------------------------------------------------------------------------------

@FEW
@given(n=st.integers(1, 8), per_chunk=st.integers(1, 6), layout=st.sampled_from(LAYOUTS))
def test_the_ranks_positions_partition_the_sequence(n, per_chunk, layout):
    seq_len = 2 * n * per_chunk
    parts = [sequence_positions(seq_len, n, r, layout) for r in range(n)]
    assert all(len(p) == seq_len // n for p in parts)
    assert torch.cat(parts).sort().values.tolist() == list(range(seq_len))
    if layout == "contiguous":
        assert parts[-1].tolist() == list(range(seq_len - seq_len // n, seq_len))
    else:                                  # rank 0 holds the first and the last chunk
        assert parts[0].tolist() == [*range(per_chunk), *range(seq_len - per_chunk, seq_len)]


@FEW
@given(n=st.integers(1, 8), per_chunk=st.integers(1, 6))
def test_zigzag_balances_the_causal_work_that_contiguous_piles_on_the_last_rank(n, per_chunk):
    seq_len, size = 2 * n * per_chunk, 2 * per_chunk          # size: a contiguous chunk, T/N
    work = {layout: ring_attention_work(seq_len, n, layout) for layout in LAYOUTS}
    for w in work.values():                                    # every unmasked score once
        assert sum(map(sum, w)) == seq_len * (seq_len + 1) // 2
    zigzag, contiguous = work["zigzag"], work["contiguous"]
    assert all(w == zigzag[0] for w in zigzag)                 # the same work on every rank at every step
    assert zigzag[0][1:] == [2 * per_chunk ** 2] * (n - 1)
    assert contiguous[n - 1] == [size * (size + 1) // 2] + [size ** 2] * (n - 1)
    assert contiguous[0] == [size * (size + 1) // 2] + [0] * (n - 1)


def test_one_rank_is_plain_causal_attention_and_16_bit_inputs_compute_in_float32(tmp_path):
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        q, k, v, _ = qkvw()
        expected = reference()[0]
        for layout in LAYOUTS:
            for method in METHODS.values():
                torch.testing.assert_close(method(q, k, v, layout=layout), expected, rtol=0, atol=1e-13)
        out = ring_attention(*(t.bfloat16() for t in (q, k, v)))
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.double(), expected, rtol=0, atol=2e-2)
        model, x = fresh_gpt(), batch()[0]
        torch.testing.assert_close(context_parallel_gpt(model, "contiguous")(x), model(x), rtol=1e-5, atol=1e-5)
    finally:
        dist.destroy_process_group()


def test_context_parallel_elements():
    kv = 2 * 2 * 1024 // 4 * 256                                # |KV| of one rank: B = 2, T = 1024, N_c = 4
    assert context_parallel_elements(2, 1024, 256, 4) == {"forward": 3 * kv, "backward": 6 * kv, "total": 9 * kv,
                                                          "saved": kv}
    assert context_parallel_elements(2, 1024, 256, 4, "allgather") == {"forward": 3 * kv, "backward": 3 * kv,
                                                                       "total": 6 * kv, "saved": 4 * kv}
    assert context_parallel_elements(2, 1024, 256, 1)["total"] == 0
