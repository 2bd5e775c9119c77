"""Properties of lab.parallel (hypothesis): the formulas give finite non-negative figures on valid input and agree
with the schedule simulator; every size refuses a bool, a float or a non-positive value naming itself; strided and
transposed views of valid inputs give what their contiguous copies give. Nothing spawns a process: the layers that
need a process group run in a one-process gloo group of this process (the ``group`` fixture)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lab.parallel import (ColumnParallelLinear, CostStage, PipelineSchedule, RowParallelLinear, bubble_fraction,
                          interleaved_order, launch, parallel_plan, schedule_order, simulate_schedule, zero_memory,
                          zero_traffic_elements)
from lab.parallel.formulas import H100_SXM, LLAMA2_7B

FEW = settings(max_examples=40, deadline=None)
TIMES = st.floats(0.1, 5.0)


@pytest.fixture(scope="module")
def group():
    """A one-process gloo group (a HashStore in this process: nothing is spawned) for this module's tests."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@FEW
@given(psi=st.integers(1, 10**12), n=st.integers(1, 1024), param_bytes=st.integers(0, 8),
       grad_bytes=st.integers(0, 8), k=st.integers(0, 16))
def test_zero_memory_is_finite_non_negative_and_shrinks_with_the_stage(psi, n, param_bytes, grad_bytes, k):
    parts = [zero_memory(psi, n, stage, param_bytes, grad_bytes, k) for stage in range(4)]
    for part in parts:
        assert all(math.isfinite(v) and v >= 0 for v in part.values())
        assert part["total"] == pytest.approx(part["params"] + part["grads"] + part["optimizer"])
    totals = [part["total"] for part in parts]
    assert totals == sorted(totals, reverse=True) and totals[0] == (param_bytes + grad_bytes + k) * psi
    assert [zero_traffic_elements(psi, stage) for stage in range(4)] == [2 * psi] * 3 + [3 * psi]


@FEW
@given(schedule=st.sampled_from(["gpipe", "1f1b"]), p=st.integers(1, 4), m=st.integers(1, 6), t_f=TIMES, t_b=TIMES)
def test_bubble_fraction_is_the_simulated_idle_share(schedule, p, m, t_f, t_b):
    events = simulate_schedule([schedule_order(schedule, p, s, m) for s in range(p)], t_f, t_b)
    makespan = max(e["end"] for e in events)
    assert makespan == pytest.approx((m + p - 1) * (t_f + t_b))
    assert 0 <= bubble_fraction(p, m) < 1
    assert 1 - m * (t_f + t_b) / makespan == pytest.approx(bubble_fraction(p, m), abs=1e-9)


@FEW
@given(p=st.integers(1, 4), k=st.integers(1, 3), v=st.integers(1, 3), t_f=TIMES, t_b=TIMES)
def test_interleaved_orders_reach_their_step_time_and_read_lists_as_tuples(p, k, v, t_f, t_b):
    m = p * k
    orders = [interleaved_order(p, s, m, v) for s in range(p)]
    events = simulate_schedule(orders, t_f, t_b)
    assert len(events) == 2 * m * v * p
    assert max(e["end"] for e in events) == pytest.approx((m + (p - 1) / v) * (t_f + t_b))
    assert simulate_schedule([[list(e) for e in order] for order in orders], t_f, t_b) == events


SIZES = {   # a call taking one size, by the size's name; every other argument valid
    "pp": lambda x: bubble_fraction(x, 8), "m": lambda x: bubble_fraction(4, x),
    "chunks": lambda x: bubble_fraction(4, 8, x), "psi": lambda x: zero_memory(x, 8, 1),
    "n": lambda x: zero_memory(10, x, 1), "n_stages": lambda x: schedule_order("1f1b", x, 0, 4),
    "n_micro": lambda x: schedule_order("1f1b", 2, 0, x), "n_chunks": lambda x: interleaved_order(2, 0, 4, x),
    "width": lambda x: CostStage(x, 0, 0), "world_size": lambda x: launch(len, x),
    "threads": lambda x: launch(len, 1, threads=x),
    "dp": lambda x: parallel_plan(LLAMA2_7B, H100_SXM, 1, 1, x, 1, 1, 4096, 64),
    "seq_len": lambda x: parallel_plan(LLAMA2_7B, H100_SXM, 1, 1, 8, 1, 1, x, 64),
    "act_shape's size": lambda x: PipelineSchedule(CostStage(4, 0, 0), 2, "gpipe", (1, x)),
}


@FEW
@given(name=st.sampled_from(sorted(SIZES)),
       bad=st.one_of(st.booleans(), st.floats(allow_nan=True), st.integers(-10**6, 0)))
def test_every_size_refuses_bools_floats_and_non_positive_values_by_name(name, bad):
    error = ValueError if type(bad) is int else TypeError
    with pytest.raises(error, match=f"{name}( must be an int|={bad!r} is out of range)"):
        SIZES[name](bad)


@FEW
@given(tp=st.sampled_from([1, 2, 4, 8]), pp=st.sampled_from([1, 2, 4, 8, 16, 32]), dp=st.integers(1, 64),
       zero=st.integers(0, 3), micro_batch=st.integers(1, 4), seq_len=st.integers(1, 8192), steps=st.integers(1, 16),
       checkpointing=st.booleans(), hfu=st.floats(0.05, 1.0))
def test_parallel_plan_is_finite_non_negative_and_below_its_hfu(tp, pp, dp, zero, micro_batch, seq_len, steps,
                                                                 checkpointing, hfu):
    plan = parallel_plan(LLAMA2_7B, H100_SXM, tp, pp, dp, zero, micro_batch, seq_len, micro_batch * dp * steps,
                         checkpointing, hfu)
    numbers = {k: v for k, v in plan.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert all(math.isfinite(v) and v >= 0 for v in numbers.values()), numbers
    assert 0 <= plan["bubble"] < 1 and plan["micro_batches"] == steps
    assert plan["mfu"] <= plan["hfu"] <= hfu * (1 + 1e-9)


def views(rows: int, cols: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A (rows, cols) transposed view and a strided (every other column) view of random values."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(cols, rows, generator=g).T, torch.randn(rows, 2 * cols, generator=g)[:, ::2]


@FEW
@given(rows=st.integers(1, 6), width=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_cost_stage_reads_views_as_their_contiguous_copies(rows, width, seed):
    stage = CostStage(width, 0, 0)
    for x in views(rows, width, seed):
        assert torch.equal(stage(x), stage(x.contiguous()))


@FEW
@given(rows=st.integers(1, 6), d_in=st.integers(1, 6), d_out=st.integers(1, 6), bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_one_rank_tensor_parallel_linears_are_the_linear_on_views(group, rows, d_in, d_out, bias, seed):
    torch.manual_seed(seed)
    linear = nn.Linear(d_in, d_out, bias=bias)
    column, row = ColumnParallelLinear(linear), RowParallelLinear(linear)
    for x in views(rows, d_in, seed):
        want = linear(x.contiguous())
        torch.testing.assert_close(column(x), want)
        torch.testing.assert_close(row(x), want)


@FEW
@given(n_micro=st.integers(1, 3), per_micro=st.integers(1, 2), width=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_a_one_stage_pipeline_reads_views_as_their_contiguous_copies(group, n_micro, per_micro, width, seed):
    def loss(x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        stage = CostStage(width, 0, 0)
        out = PipelineSchedule(stage, n_micro, "1f1b", (per_micro, width), loss_fn=nn.MSELoss()).run(x, y)
        return out, stage.weight.grad

    rows = n_micro * per_micro
    (x, y), (xs, ys) = views(rows, width, seed), views(rows, width, seed + 1)
    for a, b in ((x, xs), (y, ys)):
        got, grad = loss(a, b)
        want, want_grad = loss(a.contiguous(), b.contiguous())
        assert got == pytest.approx(want, rel=1e-6)      # MSELoss may sum a view in another order
        torch.testing.assert_close(grad, want_grad)
