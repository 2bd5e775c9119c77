"""lab.parallel's closed forms and pure helpers, checked without starting processes.

References: the numbers of the ZeRO paper's Figure 1 (Ψ = 7.5B, N_d = 64, K = 12), a
discrete-event simulation of the pipeline schedules (written here, independent of the
library), and hand-computed plan entries.
"""

from __future__ import annotations

import pytest

from lab.models.gpt import GPTConfig
from lab.parallel.comm import ring_sent_bytes
from lab.parallel.experiments import local_param_count, max_in_flight, measured_bubble, traffic_formula
from lab.parallel.formulas import (H100_SXM, LLAMA2_7B, LLAMA2_70B, GPUSpec, ModelSpec, bubble_fraction, mesh_traffic,
                                   parallel_plan, ring_factor, smallest_plans, tp_allreduce_bytes_per_layer,
                                   zero_memory, zero_traffic_elements)
from lab.parallel.launch import default_backend
from lab.parallel.pipeline import interleaved_order, layer_split, schedule_order, simulate_schedule
from lab.params.counting import gpt_param_count


def test_zero_memory_reproduces_the_papers_figure_1():
    psi, n = 7_500_000_000, 64
    totals = [zero_memory(psi, n, stage)["total"] / 1e9 for stage in (0, 1, 2, 3)]
    assert totals == pytest.approx([120.0, 31.4, 16.6, 1.9], abs=0.05)  # the figure rounds to 0.1 GB


def test_zero_memory_parts_and_traffic():
    m = zero_memory(1000, 4, 2, param_bytes=4, grad_bytes=4, k=8)
    assert m == {"params": 4000, "grads": 1000, "optimizer": 2000, "total": 7000}
    assert [zero_traffic_elements(10, s) for s in (0, 1, 2, 3)] == [20, 20, 20, 30]
    with pytest.raises(ValueError, match="stage=4"):
        zero_memory(10, 2, 4)
    with pytest.raises(ValueError, match="n=0"):
        zero_memory(10, 0, 1)


PLAN = dict(tp=1, pp=1, dp=8, zero_stage=1, micro_batch=1, seq_len=4096, global_batch=64)
SMALL = GPTConfig(vocab_size=64, context_length=16, d_model=16, n_layer=2, n_head=2, n_kv_head=1, d_ff=32)


@pytest.mark.parametrize("call, error, match", [
    (lambda: zero_memory(10, 2, True), TypeError, "stage must be one of"),
    (lambda: zero_memory(10, 2, 1, param_bytes=-2), ValueError, "param_bytes=-2"),
    (lambda: zero_memory(10, 2, 1, k=float("nan")), ValueError, "k=nan"),
    (lambda: zero_memory(2.5, 2, 1), TypeError, "psi must be an int"),
    (lambda: zero_traffic_elements(-10, 1), ValueError, "psi=-10"),
    (lambda: tp_allreduce_bytes_per_layer(2, -3, 5), ValueError, "seq_len=-3"),
    (lambda: tp_allreduce_bytes_per_layer(2, 3, 5, 1.5), TypeError, "bytes_per_element must be an int"),
    (lambda: ring_sent_bytes("all_reduce", -1000, 4), ValueError, "payload_bytes=-1000"),
    (lambda: ring_sent_bytes("all_reduce", 1000, 0), ValueError, "n=0"),
    (lambda: ring_sent_bytes("all_reduce", 1000, 2.5), TypeError, "n must be an int"),
    (lambda: layer_split(4, 2, [1.5, 2.5]), TypeError, "layers_per_stage must be a list of ints"),
    (lambda: layer_split(-4, 2), ValueError, "n_layer=-4"),
    (lambda: ModelSpec("m", -1.0, 32, 4096), ValueError, "n_params=-1.0"),
    (lambda: ModelSpec("m", 7e9, 0, 4096), ValueError, "n_layer=0"),
    (lambda: GPUSpec("g", 80e9, 0.0, 1e9, 1e9, 8, "x"), ValueError, "bf16_flops=0.0"),
    (lambda: parallel_plan(LLAMA2_7B, H100_SXM, **{**PLAN, "zero_stage": 5}), ValueError, "zero_stage=5"),
    (lambda: parallel_plan(LLAMA2_7B, H100_SXM, **PLAN, checkpointing=1), TypeError, "checkpointing must be"),
    (lambda: parallel_plan("llama", H100_SXM, **PLAN), TypeError, "model and gpu must be"),
    (lambda: traffic_formula("ddp", SMALL, 4, 2, 8, rank=4), ValueError, "rank=4"),
    (lambda: traffic_formula("tp", SMALL, 0, 2, 8), ValueError, "n=0"),
    (lambda: traffic_formula("tp", SMALL, 2, -2, 8), ValueError, "batch_size=-2"),
    (lambda: traffic_formula("tp×dp", SMALL, 4, 4, 8, inner=3), ValueError, "inner=3 is not allowed"),
    (lambda: local_param_count("tp", SMALL, 2, 0), ValueError, "strategy='tp' is not allowed"),
    (lambda: local_param_count("pp×dp", SMALL, 2, 2), ValueError, "index=2 is out of range"),
])
def test_formulas_refuse_bad_values_by_name(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_ring_volumes():
    assert ring_factor(4) == 0.75
    assert ring_sent_bytes("all_reduce", 1000, 4) == 1500          # 2(N-1)/N S
    assert ring_sent_bytes("reduce_scatter", 1000, 4) == 750
    assert ring_sent_bytes("all_gather", 1000, 4) == 750
    assert ring_sent_bytes("all_reduce", 1000, 1) == 0
    assert tp_allreduce_bytes_per_layer(2, 3, 5) == 4 * 2 * 3 * 5 * 2
    with pytest.raises(ValueError, match="op='gossip'"):
        ring_sent_bytes("gossip", 1, 2)


def simulate(schedule: str, p: int, m: int, t_f: float = 1.0, t_b: float = 2.0) -> tuple[float, list[int]]:
    """Makespan and peak in-flight micro-batches per stage when each stage runs its order as soon as
    its dependencies allow: F(s, j) after F(s-1, j), B(s, j) after B(s+1, j) (and after F(s, j))."""
    orders = [schedule_order(schedule, p, s, m) for s in range(p)]
    done, clock, pos = {}, [0.0] * p, [0] * p
    inflight, peak = [0] * p, [0] * p
    while any(pos[s] < len(orders[s]) for s in range(p)):
        progressed = False
        for s in range(p):
            if pos[s] == len(orders[s]):
                continue
            kind, j = orders[s][pos[s]]
            dep = ("F", s - 1, j) if kind == "F" and s > 0 else ("B", s + 1, j) if kind == "B" and s < p - 1 else None
            if dep is not None and dep not in done:
                continue
            start = max(clock[s], done.get(dep, 0.0))
            clock[s] = done[(kind, s, j)] = start + (t_f if kind == "F" else t_b)
            inflight[s] += 1 if kind == "F" else -1
            peak[s] = max(peak[s], inflight[s])
            pos[s] += 1
            progressed = True
        assert progressed, "deadlock"
    return max(clock), peak


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("p,m", [(1, 1), (2, 1), (2, 4), (3, 5), (4, 8), (4, 2)])
def test_schedules_are_complete_and_reach_the_bubble_formula(schedule, p, m):
    for s in range(p):
        order = schedule_order(schedule, p, s, m)
        assert sorted(order) == sorted([("F", j) for j in range(m)] + [("B", j) for j in range(m)])
        assert all(order.index(("F", j)) < order.index(("B", j)) for j in range(m))
    makespan, peak = simulate(schedule, p, m)
    assert makespan == pytest.approx((m + p - 1) * 3.0)            # (m+p-1)(t_f+t_b)
    assert 1 - m * 3.0 / makespan == pytest.approx(bubble_fraction(p, m))
    assert peak == ([m] * p if schedule == "gpipe" else [min(p - s, m) for s in range(p)])


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("p,m", [(1, 1), (2, 4), (3, 5), (4, 8)])
def test_lab_simulator_agrees_with_the_reference_simulation(schedule, p, m):
    events = simulate_schedule([schedule_order(schedule, p, s, m) for s in range(p)], 1.0, 2.0)
    makespan, peak = simulate(schedule, p, m)
    assert max(e["end"] for e in events) == pytest.approx(makespan)
    assert [max_in_flight(events, s) for s in range(p)] == peak
    assert len(events) == 2 * m * p and {e["chunk"] for e in events} == {0}


@pytest.mark.parametrize("p,m,v", [(2, 2, 2), (2, 4, 2), (3, 6, 2), (4, 4, 2), (4, 8, 2), (4, 8, 4), (4, 12, 3),
                                   (8, 16, 2)])
def test_interleaved_1f1b_reaches_the_narayanan_bubble(p, m, v):
    orders = [interleaved_order(p, s, m, v) for s in range(p)]
    for order in orders:   # every (chunk, micro-batch) forward once and backward once, forward first
        units = [(c, j) for c in range(v) for j in range(m)]
        assert sorted(order) == sorted([("F", *u) for u in units] + [("B", *u) for u in units])
        assert all(order.index(("F", c, j)) < order.index(("B", c, j)) for c, j in units)
    events = simulate_schedule(orders, 1.0, 2.0)
    makespan = max(e["end"] for e in events)
    assert makespan == pytest.approx((m + (p - 1) / v) * 3.0)          # (m + (N_p-1)/v)(t_f+t_b)
    assert (makespan - m * 3.0) / (m * 3.0) == pytest.approx((p - 1) / (v * m))
    assert measured_bubble(events) == pytest.approx(bubble_fraction(p, m, v))


def test_interleaved_with_one_chunk_is_1f1b_and_bad_input_raises():
    for s in range(4):
        assert [(k, j) for k, _, j in interleaved_order(4, s, 8, 1)] == schedule_order("1f1b", 4, s, 8)
    with pytest.raises(ValueError, match="n_micro=6 must be a multiple of n_stages=4"):
        interleaved_order(4, 0, 6, 2)
    with pytest.raises(ValueError, match="n_chunks=0"):
        interleaved_order(4, 0, 8, 0)
    with pytest.raises(ValueError, match="deadlock"):      # both stages start with a backward
        simulate_schedule([[("B", 0), ("F", 0)], [("B", 0), ("F", 0)]], 1.0, 1.0)
    with pytest.raises(ValueError, match="t_forward=0"):
        simulate_schedule([[("F", 0), ("B", 0)]], 0, 1.0)
    with pytest.raises(ValueError, match="chunks=0"):
        bubble_fraction(4, 8, 0)


def test_smallest_plans_meet_the_compute_bound():
    # 7B, 10^12 tokens in 10 days at an HFU of 40% of 989 TFLOP/s: N >= 8Ψ·tokens / (peak·hfu·10·86400) = 157.8
    # GPUs; N = N_t·N_p·N_d is a power of two here (L = 32, global batch 1024), so 256, with no pipeline bubble.
    # The step adds what communication cannot hide, so the days are at least the compute's.
    n_min = 8 * 6.74e9 * 1e12 / (989e12 * 0.4 * 10 * 86400)
    plans = smallest_plans(LLAMA2_7B, H100_SXM, 1e12, 10)
    best = plans[0]
    assert 128 < n_min < 256 and best["gpus"] == 256 and best["pp"] == 1
    assert best["days"] == pytest.approx(best["step_s"] * 1e12 / best["tokens_per_step"] / 86400)
    assert best["days"] >= n_min / 256 * 10 * (1 - 1e-12)
    assert best["step_s"] == pytest.approx(best["compute_s"] + best["tp_comm_s"] + best["dp_exposed_s"])
    assert all(plan["fits"] and plan["days"] <= 10 for plan in plans)
    assert [plan["gpus"] for plan in plans] == sorted(plan["gpus"] for plan in plans)
    with pytest.raises(ValueError, match="max_days=0"):
        smallest_plans(LLAMA2_7B, H100_SXM, 1e12, 0)
    with pytest.raises(ValueError, match=r"tps\[0\]=16"):
        smallest_plans(LLAMA2_7B, H100_SXM, 1e12, 10, tps=(16,))


def test_plan_utilisation_mfu_counts_6_psi_and_tp_comm_lengthens_the_step():
    """MFU = 6Ψ·tokens / (GPUs·peak·step), HFU = 8Ψ·tokens / (same) with recomputation: without communication
    and bubble MFU = 0.75·HFU = 0.75·hfu. Tensor-parallel all-reduces (6 per layer and micro-batch with
    recomputation, 2(N_t−1)/N_t·B_μ·T·C·2 bytes each over NVLink) are added to the step."""
    plan = parallel_plan(LLAMA2_7B, H100_SXM, 1, 1, 8, 1, 1, 4096, 1024)
    assert plan["hfu"] == pytest.approx(0.4) and plan["mfu"] == pytest.approx(0.3)
    tp = parallel_plan(LLAMA2_70B, H100_SXM, 8, 1, 8, 1, 1, 4096, 1024)
    tp_bytes = 6 * 2 * 7 / 8 * 4096 * 8192 * 2 * 80 * 128            # 6 all-reduces × layers × micro-batches
    assert tp["tp_comm_s"] == pytest.approx(tp_bytes / H100_SXM.intra_node_bw)
    assert tp["step_s"] == pytest.approx(tp["compute_s"] + tp["tp_comm_s"] + tp["dp_exposed_s"])
    assert tp["mfu"] < tp["mfu_without_tp_comm"] <= 0.3 + 1e-12
    assert tp["hfu"] == pytest.approx(tp["mfu"] * 8 / 6)
    no_ckpt = parallel_plan(LLAMA2_70B, H100_SXM, 8, 1, 8, 1, 1, 4096, 1024, checkpointing=False)
    assert no_ckpt["tp_comm_s"] == pytest.approx(tp["tp_comm_s"] * 4 / 6)
    # data-parallel traffic is hidden only behind the last micro-batch's backward (3/4 of its compute)
    dp = parallel_plan(LLAMA2_7B, H100_SXM, 1, 1, 64, 1, 1, 4096, 1024)
    assert dp["dp_exposed_s"] == pytest.approx(dp["dp_comm_s"] - 0.75 * dp["compute_s"] / 16)
    with pytest.raises(ValueError, match="hfu=0"):
        parallel_plan(LLAMA2_7B, H100_SXM, 1, 1, 8, 1, 1, 4096, 1024, hfu=0)


def test_schedule_and_split_reject_bad_input():
    with pytest.raises(ValueError, match="n_micro=0"):
        schedule_order("gpipe", 2, 0, 0)
    with pytest.raises(ValueError, match="schedule='zb'"):
        schedule_order("zb", 2, 0, 1)
    with pytest.raises(ValueError, match="stage=2"):
        schedule_order("1f1b", 2, 2, 1)
    with pytest.raises(ValueError, match="n_layer=6 is not divisible"):
        layer_split(6, 4)
    with pytest.raises(ValueError, match="stage 1 of 3 would have no parameters"):
        layer_split(4, 3, [2, 0, 2])
    with pytest.raises(ValueError, match="summing"):
        layer_split(4, 2, [1, 2])
    assert layer_split(4, 3, [0, 2, 2]) == [0, 2, 2]   # stage 0 still holds the embedding
    with pytest.raises(ValueError, match="m=0"):
        bubble_fraction(4, 0)


def test_parallel_plan_by_hand():
    plan = parallel_plan(LLAMA2_7B, H100_SXM, tp=1, pp=1, dp=8, zero_stage=1, micro_batch=1, seq_len=4096,
                         global_batch=1024)
    assert plan["states_GB"] == pytest.approx((4 + 12 / 8) * 6.74)        # 2Ψ + 2Ψ + 12Ψ/8
    assert plan["micro_batches"] == 128 and plan["bubble"] == 0 and plan["fits"]
    assert plan["compute_s"] == pytest.approx(8 * 6.74e9 * 1024 * 4096 / (8 * 989e12 * 0.4))
    too_big = parallel_plan(LLAMA2_70B, H100_SXM, tp=1, pp=1, dp=8, zero_stage=3, micro_batch=1, seq_len=4096,
                            global_batch=1024)
    assert too_big["states_GB"] == pytest.approx(16 * 68.98 / 8) and not too_big["fits"]
    with pytest.raises(ValueError, match="pp=3"):
        parallel_plan(LLAMA2_70B, H100_SXM, 8, 3, 1, 1, 1, 4096, 8)
    with pytest.raises(ValueError, match="tp=16"):
        parallel_plan(LLAMA2_70B, H100_SXM, 16, 1, 1, 1, 1, 4096, 8)


def test_h100_figures_are_the_labelled_datasheet_ones():
    from lab.core.ceilings import DATASHEETS

    sheet = DATASHEETS["h100-sxm5"]
    assert (H100_SXM.bf16_flops, H100_SXM.memory_bytes) == (sheet.bf16_flops, 80e9)
    assert (H100_SXM.intra_node_bw, H100_SXM.inter_node_bw) == (450e9, 50e9)   # NVLink each way, NDR IB
    assert H100_SXM.source.startswith(sheet.source) and "dgx-h100" in H100_SXM.source


def test_default_backend_is_gloo_without_gpus():
    import torch

    assert default_backend(2) == ("nccl" if torch.cuda.device_count() >= 2 else "gloo")


def test_mesh_traffic_by_hand():
    """Stage 1 of N_p = 4 (both boundaries), N_t = 4, N_d = 8; ℓ = 3 layers, m = 5 micro-batches of B_μ = 2, T = 16,
    C = 8, σ = 2, Ψ_local = 1000. The ends of a pipeline send across one boundary, a single stage across none."""
    act = 2 * 16 * 8 * 2                                                   # B_μ·T·C·σ
    traffic = mesh_traffic(1000, 4, 4, 8, 1, 3, 2, 5, 16, 8)
    assert traffic == {"tp": 2 * 3 / 4 * 4 * act * 3 * 5, "pp": 2 * 5 * act, "dp": 2 * 7 / 8 * 2 * 1000}
    assert [mesh_traffic(1000, 4, 4, 8, s, 3, 2, 5, 16, 8)["pp"] for s in (0, 3)] == [5 * act] * 2
    assert mesh_traffic(1000, 4, 1, 8, 0, 3, 2, 5, 16, 8)["pp"] == 0
    assert mesh_traffic(1000, 1, 4, 1, 1, 3, 2, 5, 16, 8) == {"tp": 0, "pp": 2 * 5 * act, "dp": 0}
    heavier = mesh_traffic(1000, 4, 4, 8, 1, 3, 2, 5, 16, 8, checkpointing=True, zero_stage=3)
    assert (heavier["tp"], heavier["dp"]) == (1.5 * traffic["tp"], 1.5 * traffic["dp"])


def test_parallel_plan_composes_the_mesh_traffic_of_a_middle_stage():
    """70B on N_t = 8, N_p = 4, N_d = 16: stage 2 sends m = 64 micro-batches' activations both ways, over InfiniBand
    (a pipeline spans N_t·N_p = 32 GPUs, 4 nodes); the shard Ψ/(N_t·N_p) is all-reduced over 16 replicas. The
    pipeline sends overlap compute, so the step leaves them out."""
    plan = parallel_plan(LLAMA2_70B, H100_SXM, 8, 4, 16, 1, 1, 4096, 1024)
    act = 4096 * 8192 * 2                                                  # B_μ·T·C·σ, bf16
    assert plan["pp_bytes"] == 2 * 64 * act
    assert plan["pp_comm_s"] == plan["pp_bytes"] / H100_SXM.inter_node_bw
    assert plan["dp_bytes"] == pytest.approx(2 * 15 / 16 * 2 * LLAMA2_70B.n_params / 32)
    assert plan["tp_bytes"] == pytest.approx(2 * 7 / 8 * 6 * act * 20 * 64)   # 6 all-reduces with recomputation
    assert plan["tp_comm_s"] == plan["tp_bytes"] / H100_SXM.intra_node_bw
    assert plan["dp_comm_s"] == plan["dp_bytes"] / H100_SXM.inter_node_bw
    assert plan["step_s"] == plan["compute_s"] + plan["tp_comm_s"] + plan["dp_exposed_s"]
    one_node = parallel_plan(LLAMA2_7B, H100_SXM, 2, 2, 2, 1, 1, 4096, 1024)  # 8 GPUs; stage 1 of 2, m = 512
    assert one_node["pp_bytes"] == 512 * 4096 * 4096 * 2 and one_node["pp_comm_s"] == one_node["pp_bytes"] / 450e9


def test_local_param_count_adds_up_to_the_model():
    """Summed over the inner axis: tp×dp holds the embedding and norms N_t times, the matrices once; pp×dp every
    block once and the tied embedding twice (first and last stage). One rank alone holds the whole model."""
    for config in (SMALL, GPTConfig(**{**SMALL.to_dict(), "tie_embeddings": False})):
        psi, vc, c, L = gpt_param_count(config), config.vocab_size * config.d_model, config.d_model, config.n_layer
        tied = config.tie_embeddings
        replicated = vc * (1 if tied else 2) + c + 2 * c * L
        assert sum(local_param_count("tp×dp", config, 2, i) for i in range(2)) == psi + replicated
        assert sum(local_param_count("pp×dp", config, 2, i) for i in range(2)) == psi + (vc if tied else 0)
        assert local_param_count("tp×dp", config, 1, 0) == local_param_count("pp×dp", config, 1, 0) == psi
