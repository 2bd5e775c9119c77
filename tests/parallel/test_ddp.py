"""lab.parallel.ddp on 2 gloo processes against `torch.nn.parallel.DistributedDataParallel` (gradients, bit
for bit), the full-batch gradients and the ring all-reduce formula (traffic); `job_*` runs in conftest's launch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from lab.parallel.comm import CommCounter
from lab.parallel.ddp import DataParallel
from lab.parallel.strategies import held_bytes, lm_loss
from lab.parallel.zero import ZeroOptimizer
from lab.params.counting import gpt_param_count
from tests.parallel.test_strategies import CFG, B, N, batch, fresh_gpt, grads_by_name

# ---------------------------------------------------------------------------------------------
# data parallel (job_data_parallel also runs the ZeRO steps that test_zero checks)
# ---------------------------------------------------------------------------------------------

def job_data_parallel(steps: int) -> dict:
    rank = dist.get_rank()
    x, y = batch()
    rows = slice(rank * B // N, (rank + 1) * B // N)
    out = {}
    ours = DataParallel(fresh_gpt(), bucket_cap_mb=0.02)  # several buckets
    ref = nn.parallel.DistributedDataParallel(fresh_gpt(), bucket_cap_mb=0.02)
    for name, model in (("ours", ours), ("torch", ref)):
        with CommCounter() as counter:
            lm_loss(model(x[rows]), y[rows]).backward()
        out[name] = grads_by_name(model.module)
        out[f"{name}_comm"] = counter.summary()
    out["n_buckets"] = len(ours.buckets)
    for stage in (1, 2, 3):
        model = fresh_gpt()
        opt = ZeroOptimizer(model, torch.optim.AdamW, stage, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
        with CommCounter() as counter:
            for step in range(steps):
                opt.zero_grad()
                xs, ys = batch(seed=10 + step)
                lm_loss(model(xs[rows]), ys[rows]).backward()
                opt.step()
        out[f"zero{stage}"] = opt.gathered_state_dict()
        out[f"zero{stage}_comm"] = counter.summary()
        out[f"zero{stage}_memory"] = held_bytes(opt.held_tensors())
        out[f"zero{stage}_padded"] = sum(u.full.numel() for u in opt.units)
        out[f"zero{stage}_peak"] = opt.peak_bytes
        out[f"zero{stage}_largest_unit"] = max((u.n, u.full.numel()) for u in opt.units)
    return out


def test_data_parallel_gradients_equal_torch_ddp_bit_for_bit(dp_results):
    assert dp_results[0]["n_buckets"] > 1
    for rank_out in dp_results:
        assert rank_out["ours"].keys() == rank_out["torch"].keys()
        for name, g in rank_out["ours"].items():
            assert torch.equal(g, rank_out["torch"][name]), name
    for name, g in dp_results[0]["ours"].items():  # identical on both ranks
        assert torch.equal(g, dp_results[1]["ours"][name]), name


def test_data_parallel_gradients_are_the_full_batch_gradients(dp_results):
    model = fresh_gpt()
    x, y = batch()
    lm_loss(model(x), y).backward()
    for name, g in grads_by_name(model).items():
        torch.testing.assert_close(dp_results[0]["ours"][name], g, rtol=1e-5, atol=1e-7)


def test_comm_counter_data_parallel_traffic_matches_ring_formula(dp_results):
    psi = gpt_param_count(CFG)
    comm = dp_results[0]["ours_comm"]
    assert set(comm["ops"]) == {"all_reduce"}
    assert comm["ops"]["all_reduce"]["calls"] == dp_results[0]["n_buckets"]
    assert comm["payload_bytes"] == 4 * psi                      # every gradient once, fp32
    assert comm["sent_bytes"] == pytest.approx(2 * (N - 1) / N * 4 * psi)   # ring all-reduce
