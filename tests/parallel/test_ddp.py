"""lab.parallel.ddp on 2 gloo processes against `torch.nn.parallel.DistributedDataParallel` (gradients, bit
for bit), the full-batch gradients and the ring all-reduce formula (traffic); gradient accumulation with
`DataParallel.no_sync` against the same arithmetic without communication (bit for bit) and the large-batch
gradient (float64 round-off); `job_*` runs in conftest's launch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lab.parallel.comm import CommCounter, ring_sent_bytes
from lab.parallel.ddp import DataParallel
from lab.parallel.experiments import accumulate_gradients, accumulation_traffic
from lab.parallel.strategies import held_bytes, lm_loss
from lab.parallel.zero import ZeroOptimizer
from lab.params.counting import gpt_param_count
from tests.parallel.test_strategies import CFG, B, N, T, batch, fresh_gpt, grads_by_name

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


# ---------------------------------------------------------------------------------------------
# gradient accumulation: DataParallel.no_sync
# ---------------------------------------------------------------------------------------------

K, B_ACC = 4, 16                        # k micro-batches of B_ACC/(N·K) = 2 rows on each rank


def loss64(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy in the logits' dtype (`lm_loss` computes it in fp32, hiding float64 round-off)."""
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def acc_batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, CFG.vocab_size, (B_ACC, T + 1), generator=torch.Generator().manual_seed(5))
    return ids[:, :-1], ids[:, 1:]


def job_no_sync() -> dict:
    """One float64 step of K micro-batches, no_sync on the first K−1; both ranks' local accumulations computed in
    this process without communication (a plain model, the same micro-batches); the fp32 traffic both ways."""
    x, y = acc_batch()
    shards = [slice(r * B_ACC // N, (r + 1) * B_ACC // N) for r in range(N)]
    model = DataParallel(fresh_gpt().double())
    accumulate_gradients(model, x[shards[dist.get_rank()]], y[shards[dist.get_rank()]], K, loss_fn=loss64)
    local = []
    for rows in shards:
        plain = fresh_gpt().double()
        accumulate_gradients(plain, x[rows], y[rows], K, no_sync=False, loss_fn=loss64)
        local.append(grads_by_name(plain))
    return {"grads": grads_by_name(model.module), "local": local, "traffic": accumulation_traffic(CFG, B_ACC, T, K)}


def test_no_sync_gradients_equal_the_averaged_local_accumulations_bit_for_bit(results):
    """The hook of the last micro-batch sees the accumulated p.grad = a (rank 0) or b (rank 1) and reduces it once:
    a·(1/2) + b·(1/2), one addition per element (with 2 ranks the all-reduce's sum has no order), bit for bit
    what the communication-free arithmetic gives."""
    for out in (r["no_sync"] for r in results):
        a, b = out["local"]
        assert out["grads"].keys() == a.keys()
        for name, g in out["grads"].items():
            assert g.dtype == torch.float64 and torch.equal(g, a[name] * (1 / N) + b[name] * (1 / N)), name
    assert all(torch.equal(g, results[1]["no_sync"]["grads"][n]) for n, g in results[0]["no_sync"]["grads"].items())


def test_no_sync_gradients_equal_the_large_batch_gradient_to_float64_round_off(results):
    """K micro-batches of B/(N·K) rows, each loss / K, averaged over N ranks: the gradient of one backward pass over
    all B rows in one process, equal up to round-off (the sums run in another order), here ≤ 1e-15 in float64."""
    model = fresh_gpt().double()
    loss64(model(acc_batch()[0]), acc_batch()[1]).backward()
    for name, g in grads_by_name(model).items():
        torch.testing.assert_close(results[0]["no_sync"]["grads"][name], g, rtol=0, atol=1e-15, msg=name)


def test_no_sync_sends_one_all_reduce_per_step_instead_of_k(results):
    traffic = results[0]["no_sync"]["traffic"]
    payload = 4 * traffic["psi"]                                        # Ψ fp32 gradients, one bucket
    assert traffic["psi"] == gpt_param_count(CFG)
    for name, calls in (("no_sync", 1), ("every_micro_batch", K)):
        comm = traffic[name]
        assert set(comm["ops"]) == {"all_reduce"} and comm["ops"]["all_reduce"]["calls"] == calls, name
        assert comm["payload_bytes"] == calls * payload
        assert comm["sent_bytes"] == calls * ring_sent_bytes("all_reduce", payload, N)
    assert 0 <= traffic["max_grad_diff"] < 1e-6     # fp32 round-off of the other order (gradients ≤ 0.05 here)
