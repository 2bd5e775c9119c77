"""lab.parallel on 2 gloo processes: each strategy against an independent reference.

References: `torch.nn.parallel.DistributedDataParallel` (gradients, bit for bit), one-process
`torch.optim.AdamW` on the whole batch (ZeRO 1/2/3, and every row of the strategy table through
`lab.parallel.strategies.train`), the unsplit lab GPT (tensor and pipeline parallel outputs and
gradients), and the closed forms of `lab.parallel.formulas` (traffic, memory).
The functions named ``job_*`` run on every rank (spawned; this module is importable there) and
return plain data; the assertions run in the test process. Each job groups several checks,
because starting a process costs a few seconds.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist
from torch import nn

from lab.parallel.comm import CommCounter
from lab.parallel.ddp import DataParallel
from lab.parallel.formulas import zero_memory
from lab.parallel.launch import launch
from lab.parallel.pipeline import CostStage, PipelineSchedule, gpt_stage
from lab.parallel.tensor_parallel import ColumnParallelLinear, RowParallelLinear, tensor_parallel_block, tensor_parallel_gpt
from lab.parallel.strategies import DISTRIBUTED, STRATEGIES, TABLE, TINY, held_bytes, lm_loss, train
from lab.parallel.zero import ZeroOptimizer
from lab.models.gpt import GPT, GPTConfig
from lab.models.next_token import random_batch
from lab.params.counting import gpt_param_count
from lab.models.loop import lr_at

N = 2
CFG = GPTConfig(vocab_size=61, context_length=16, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=48)
B, T = 4, 16
TOKENS = torch.randint(0, CFG.vocab_size, (2000,), generator=torch.Generator().manual_seed(7))


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, CFG.vocab_size, (B, T + 1), generator=torch.Generator().manual_seed(seed))
    return ids[:, :-1], ids[:, 1:]


def fresh_gpt(seed: int = 0, cfg: GPTConfig = CFG) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg)


def grads_by_name(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


# ---------------------------------------------------------------------------------------------
# data parallel and ZeRO
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
    return out


def adamw_reference(steps: int) -> dict[str, torch.Tensor]:
    model = fresh_gpt()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    for step in range(steps):
        opt.zero_grad()
        xs, ys = batch(seed=10 + step)
        lm_loss(model(xs), ys).backward()
        opt.step()
    return dict(model.named_parameters())


def job_zero_accumulation(steps: int) -> dict:
    """ZeRO with two backward passes (half of this rank's rows each, loss / 2) before every step;
    bf16 parameters; what stage 1 leaves in ``.grad``."""
    rows = dist.get_rank() * B // N
    out = {}
    for stage in (1, 2, 3):
        model = fresh_gpt()
        opt = ZeroOptimizer(model, torch.optim.AdamW, stage, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
        for step in range(steps):
            opt.zero_grad()
            xs, ys = batch(seed=10 + step)
            for half in (slice(rows, rows + B // N // 2), slice(rows + B // N // 2, rows + B // N)):
                (lm_loss(model(xs[half]), ys[half]) / 2).backward()
            opt.step()
        out[f"zero{stage}"] = opt.gathered_state_dict()
        out[f"zero{stage}_grads_after_step"] = [p.grad is None for p in model.parameters()]
    bf16 = fresh_gpt().to(torch.bfloat16)
    opt = ZeroOptimizer(bf16, torch.optim.AdamW, 2, lr=1e-2)
    xs, ys = batch()
    lm_loss(bf16(xs).float(), ys).backward()
    opt.step()
    out["bf16"] = {"shard_dtypes": {str(u.shard.dtype) for u in opt.units},
                   "param_dtypes": {str(p.dtype) for p in bf16.parameters()},
                   "state": opt.gathered_state_dict()}
    return out


def job_all(steps: int) -> dict:
    """Every check that runs on a healthy group, in one launch (a launch costs seconds)."""
    return {"dp": job_data_parallel(steps), "mp": job_model_parallel(), "bad": job_bad_input(),
            "acc": job_zero_accumulation(steps), "train": job_train_every_strategy(steps)}


@pytest.fixture(scope="module")
def results():
    return launch(job_all, N, 3, timeout=60)


@pytest.fixture(scope="module")
def dp_results(results):
    return [r["dp"] for r in results]


@pytest.fixture(scope="module")
def mp_results(results):
    return [r["mp"] for r in results]


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


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_parameters_after_k_steps_equal_single_process_adamw(dp_results, stage):
    ref = adamw_reference(3)
    for rank_out in dp_results:
        got = rank_out[f"zero{stage}"]
        assert got.keys() == ref.keys()
        for name, p in ref.items():
            # Adam divides by √v: rounding differences of the averaged gradient move a weight by ≪ lr
            torch.testing.assert_close(got[name], p.detach(), rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_accumulates_gradients_over_backward_passes(results, stage):
    """Two half-batch backward passes per step give plain AdamW on the whole batch (the bug: stages
    2–3 kept only the last micro-batch's gradient, relative error ≈ 0.5); stage 1 leaves no mixed
    reduced / unreduced ``.grad`` behind."""
    ref = adamw_reference(3)
    for rank_out in (r["acc"] for r in results):
        got = rank_out[f"zero{stage}"]
        for name, p in ref.items():
            torch.testing.assert_close(got[name], p.detach(), rtol=1e-4, atol=1e-5, msg=name)
        assert all(rank_out[f"zero{stage}_grads_after_step"])


def test_zero_keeps_fp32_master_shards_for_bf16_parameters(results):
    fp32_initial = {n: p.detach() for n, p in fresh_gpt().named_parameters()}
    for bf16 in (r["acc"]["bf16"] for r in results):
        assert bf16["shard_dtypes"] == {"torch.float32"} and bf16["param_dtypes"] == {"torch.bfloat16"}
        moved = [(bf16["state"][n].float() - p.bfloat16().float()).abs().max().item() for n, p in fp32_initial.items()]
        assert all(m > 0 for m in moved)        # every tensor was updated through its master shard
    a, b = (r["acc"]["bf16"]["state"] for r in results)
    assert all(torch.equal(a[n], b[n]) for n in a)   # and the ranks agree


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_traffic_and_memory_match_formulas(dp_results, stage):
    psi, steps = gpt_param_count(CFG), 3
    padded = dp_results[0][f"zero{stage}_padded"]
    assert psi <= padded < psi + N * (CFG.n_layer + 1)         # at most N-1 padding elements per unit
    ops = dp_results[0][f"zero{stage}_comm"]["ops"]
    assert ops["reduce_scatter"]["payload_bytes"] == steps * 4 * padded
    assert ops["all_gather"]["payload_bytes"] == steps * 4 * padded * (2 if stage == 3 else 1)
    total = sum(o["payload_bytes"] for o in ops.values())
    assert total == steps * 4 * padded * (3 if stage == 3 else 2)          # 2Ψ (stages 1-2), 3Ψ (stage 3)
    formula = zero_memory(padded, N, stage, param_bytes=4, grad_bytes=4, k=8)
    for rank_out in dp_results:
        memory = rank_out[f"zero{stage}_memory"]
        for part in ("params", "grads", "optimizer"):
            assert memory[part] == formula[part], part


# ---------------------------------------------------------------------------------------------
# the strategy table through the one training loop (lab.parallel.strategies.train)
# ---------------------------------------------------------------------------------------------

def job_train_every_strategy(steps: int) -> dict:
    records = {s: train(s, CFG, TOKENS, steps, B, T, lr=1e-2) for s in DISTRIBUTED}
    return {s: {"loss": r["loss"], "world_size": r["world_size"], "steps": len(r["step_seconds"])}
            for s, r in records.items()}


def train_reference(steps: int, lr: float = 1e-2, warmup: int = 5, seed: int = 0) -> list[float]:
    """One process: AdamW on the global batch, one group (decay 0.1 everywhere), no clipping, `lr_at`."""
    model = fresh_gpt(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    gen, losses = torch.Generator().manual_seed(seed + 1), []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        x, y = random_batch(TOKENS, B, T, gen)
        opt.zero_grad()
        loss = lm_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_every_row_of_the_strategy_table_trains_like_one_process(results):
    assert set(DISTRIBUTED) | {"single"} == set(STRATEGIES) == set(TABLE)
    ref = train_reference(3)
    assert train("single", CFG, TOKENS, 3, B, T, lr=1e-2)["loss"] == ref          # the loop is plain AdamW
    per_rank = [r["train"] for r in results]
    assert set(per_rank[0]) == set(DISTRIBUTED)                                     # every row ran
    for strategy in DISTRIBUTED:
        a, b = (r[strategy] for r in per_rank)
        assert a == b, strategy                                                     # the global loss on every rank
        assert a["world_size"] == N and a["steps"] == 3
        assert max(abs(x - y) for x, y in zip(a["loss"], ref)) < 1e-4, strategy
    assert per_rank[0]["ddp"]["loss"] == per_rank[0]["torch_ddp"]["loss"]          # bit for bit


def test_unknown_strategy_and_missing_group_are_clear_errors():
    with pytest.raises(ValueError, match=r"strategy='fsdp' is not allowed; use one of \('single', 'ddp'"):
        train("fsdp", CFG, TOKENS, 1, B, T)
    with pytest.raises(ValueError, match="strategy='zero2' needs a process group"):
        train("zero2", CFG, TOKENS, 1, B, T)
    with pytest.raises(ValueError, match="steps=0 is out of range"):
        train("single", CFG, TOKENS, 0, B, T)


# ---------------------------------------------------------------------------------------------
# tensor and pipeline parallel
# ---------------------------------------------------------------------------------------------

def job_model_parallel() -> dict:
    rank = dist.get_rank()
    x, y = batch()
    out = {}
    # ColumnParallelLinear then RowParallelLinear on a plain MLP-like pair, with biases
    torch.manual_seed(3)
    lin1, lin2 = nn.Linear(6, 8), nn.Linear(8, 5)
    col, row = ColumnParallelLinear(lin1), RowParallelLinear(lin2)
    inp = torch.randn(3, 6, generator=torch.Generator().manual_seed(4), requires_grad=True)
    y_par = row(torch.relu(col(inp)))
    y_par.sum().backward()
    out["linear"] = (y_par.detach(), inp.grad.clone(), col.weight.grad.clone(), row.weight.grad.clone(),
                     col.bias.grad.clone(), row.bias.grad.clone())
    # tensor-parallel GPT
    tp = tensor_parallel_gpt(fresh_gpt())
    with CommCounter() as fwd:
        logits = tp(x)
    loss = lm_loss(logits, y)
    with CommCounter() as bwd:
        loss.backward()
    out["tp_logits"], out["tp_grads"] = logits.detach(), grads_by_name(tp)
    out["tp_comm"] = (fwd.summary(), bwd.summary())
    # pipeline, both schedules
    for schedule in ("gpipe", "1f1b"):
        stage = gpt_stage(fresh_gpt())
        pipe = PipelineSchedule(stage, 2, schedule, (B // 2, T, CFG.d_model), loss_fn=lm_loss)
        with CommCounter() as counter:
            loss = pipe.run(x if rank == 0 else None, y if rank == N - 1 else None)
        out[schedule] = {"loss": loss, "grads": grads_by_name(stage), "comm": counter.summary(),
                         "order": [(e["kind"], e["micro"]) for e in pipe.events]}
    return out


def test_column_and_row_parallel_linears_equal_the_unsplit_layers(mp_results):
    torch.manual_seed(3)
    lin1, lin2 = nn.Linear(6, 8), nn.Linear(8, 5)
    inp = torch.randn(3, 6, generator=torch.Generator().manual_seed(4), requires_grad=True)
    y = lin2(torch.relu(lin1(inp)))
    y.sum().backward()
    for r, rank_out in enumerate(mp_results):
        y_par, g_in, g_col, g_row, g_cb, g_rb = rank_out["linear"]
        torch.testing.assert_close(y_par, y.detach())
        torch.testing.assert_close(g_in, inp.grad)
        torch.testing.assert_close(g_col, lin1.weight.grad[4 * r: 4 * (r + 1)])
        torch.testing.assert_close(g_row, lin2.weight.grad[:, 4 * r: 4 * (r + 1)])
        torch.testing.assert_close(g_cb, lin1.bias.grad[4 * r: 4 * (r + 1)])
        torch.testing.assert_close(g_rb, lin2.bias.grad)


def _shard(name: str, full: torch.Tensor, r: int) -> torch.Tensor:
    """Rank r's slice of an unsplit gradient, following the tensor-parallel layout."""
    if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight", "up_proj.weight")):
        return full.chunk(N, 0)[r]
    if name.endswith(("o_proj.weight", "down_proj.weight")):
        return full.chunk(N, 1)[r]
    return full


def test_tensor_parallel_gpt_outputs_and_gradients_equal_the_unsplit_model(mp_results):
    model = fresh_gpt()
    x, y = batch()
    logits = model(x)
    lm_loss(logits, y).backward()
    full = {n.replace("attn_norm.", "attn_norm.0.").replace("mlp_norm.", "mlp_norm.0."): g
            for n, g in grads_by_name(model).items()}
    for r, rank_out in enumerate(mp_results):
        torch.testing.assert_close(rank_out["tp_logits"], logits.detach(), rtol=1e-5, atol=1e-5)
        assert rank_out["tp_grads"].keys() == full.keys()
        for name, g in rank_out["tp_grads"].items():
            torch.testing.assert_close(g, _shard(name, full[name], r), rtol=1e-5, atol=1e-6, msg=name)


def test_tensor_parallel_traffic_is_two_all_reduces_per_layer_each_way(mp_results):
    fwd, bwd = mp_results[0]["tp_comm"]
    act_bytes = B * T * CFG.d_model * 4
    for summary in (fwd, bwd):
        assert set(summary["ops"]) == {"all_reduce"}
        assert summary["ops"]["all_reduce"]["calls"] == 2 * CFG.n_layer
        assert summary["payload_bytes"] == 2 * CFG.n_layer * act_bytes
        assert summary["sent_bytes"] == pytest.approx(2 * (N - 1) / N * 2 * CFG.n_layer * act_bytes)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_pipeline_loss_and_gradients_equal_the_unsplit_model(mp_results, schedule):
    model = fresh_gpt()
    x, y = batch()
    loss = lm_loss(model(x), y)
    loss.backward()
    full = grads_by_name(model)
    first, last = mp_results[0][schedule], mp_results[1][schedule]
    assert first["loss"] is None
    assert last["loss"] == pytest.approx(loss.item(), rel=1e-6)
    for rank_out in (first, last):
        for name, g in rank_out["grads"].items():
            if name.startswith("layers."):   # stage-local layer index → global index
                i, rest = name.split(".", 2)[1:]
                name = f"layers.{int(i) + (CFG.n_layer // N if rank_out is last else 0)}.{rest}"
            name = name.replace("lm_head.", "embed_tokens.")  # tied: both copies get the summed gradient
            torch.testing.assert_close(g, full[name], rtol=1e-5, atol=1e-6, msg=name)
    # traffic: activations forward and their gradients backward, (B/m, T, C) fp32 each, plus the tied weight
    act = B // 2 * T * CFG.d_model * 4
    assert first["comm"]["ops"]["send"]["payload_bytes"] == 2 * act
    assert last["comm"]["ops"]["send"]["payload_bytes"] == 2 * act
    assert first["comm"]["ops"]["all_reduce"]["payload_bytes"] == CFG.vocab_size * CFG.d_model * 4


def test_pipeline_schedules_run_in_their_order(mp_results):
    assert mp_results[0]["gpipe"]["order"] == [("F", 0), ("F", 1), ("B", 0), ("B", 1)]
    assert mp_results[0]["1f1b"]["order"] == [("F", 0), ("F", 1), ("B", 0), ("B", 1)]  # warm-up p-1 = 1
    assert mp_results[1]["1f1b"]["order"] == [("F", 0), ("B", 0), ("F", 1), ("B", 1)]


# ---------------------------------------------------------------------------------------------
# bad input on every rank, and a failing rank
# ---------------------------------------------------------------------------------------------

def job_bad_input() -> list[str]:
    cases = {
        "heads": lambda: tensor_parallel_block(fresh_gpt(cfg=GPTConfig(**{**CFG.to_dict(), "n_head": 3,
                                                                            "n_kv_head": 1, "d_model": 36})).layers[0]),
        "d_ff": lambda: tensor_parallel_block(fresh_gpt(cfg=GPTConfig(**{**CFG.to_dict(), "d_ff": 47})).layers[0]),
        "column": lambda: ColumnParallelLinear(nn.Linear(4, 5)),
        "row": lambda: RowParallelLinear(nn.Linear(5, 4)),
        "layers": lambda: gpt_stage(fresh_gpt(cfg=GPTConfig(**{**CFG.to_dict(), "n_layer": 3}))),
        "micro": lambda: PipelineSchedule(CostStage(4, 0.0, 0.0), 0, "gpipe", (1, 4)),
        "empty_stage": lambda: PipelineSchedule(nn.Identity(), 2, "gpipe", (1, 4)),
        "batch_split": lambda: PipelineSchedule(CostStage(4, 0.0, 0.0), 3, "gpipe", (1, 4)).run(
            torch.zeros(4, 4) if dist.get_rank() == 0 else None, torch.zeros(4, 4) if dist.get_rank() == 1 else None),
        "zero_stage": lambda: ZeroOptimizer(fresh_gpt(), torch.optim.AdamW, 4),
        "bucket": lambda: DataParallel(fresh_gpt(), bucket_cap_mb=0),
    }
    messages = []
    for name, case in cases.items():
        try:
            case()
            messages.append(f"{name}: no error")
        except ValueError as exc:
            messages.append(f"{name}: {exc}")
    return messages


def job_fail_mid_step() -> None:
    model = DataParallel(fresh_gpt())
    x, y = batch()
    if dist.get_rank() == 1:
        raise RuntimeError("boom on rank 1 mid-step")
    lm_loss(model(x), y).backward()  # rank 0 waits in the gradient all-reduce for a dead peer


def test_bad_input_raises_value_error_on_every_rank(results):
    expected = {"heads": "n_head=3", "d_ff": "d_ff=47", "column": "out_features=5", "row": "in_features=5",
                "layers": "n_layer=3", "micro": "n_micro=0", "empty_stage": "no parameters",
                "batch_split": "n_micro=3", "zero_stage": "stage=4", "bucket": "bucket_cap_mb=0"}
    for messages in (r["bad"] for r in results):
        assert len(messages) == len(expected)
        for line, (name, fragment) in zip(messages, expected.items()):
            assert line.startswith(f"{name}: ") and fragment in line, line


def test_a_failing_rank_makes_the_launch_raise_in_bounded_time():
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="rank 1 of 2 failed(.|\n)*boom on rank 1 mid-step"):
        launch(job_fail_mid_step, N, timeout=10)
    assert time.perf_counter() - start < 60


def test_launch_rejects_bad_arguments():
    with pytest.raises(ValueError, match="world_size=0"):
        launch(job_bad_input, 0)
    with pytest.raises(ValueError, match="backend='mpi'"):
        launch(job_bad_input, 1, backend="mpi")
    with pytest.raises(ValueError, match="timeout=0"):
        launch(job_bad_input, 1, timeout=0)


def test_torchrun_runs_the_training_entry_point(tmp_path):
    """`torchrun -m lab.parallel.strategies`: the command-line path, with the process group from the environment."""
    import json
    import os
    import subprocess
    import sys

    from lab.parallel.launch import free_port

    env = {**os.environ, "OMP_NUM_THREADS": "1"}                            # lab is pip-installed (-e)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "lab.parallel.strategies", "--strategy", "zero3", "--steps", "2", "--data", "random"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["strategy"] == "zero3" and record["world_size"] == 2 and len(record["loss"]) == 2
    assert record["comm"]["ops"]["all_gather"]["calls"] == 2 * 2 * (TINY.n_layer + 1)  # fwd + bwd per unit, 2 steps


def test_a_single_pipeline_stage_keeps_the_tied_embedding_tied():
    """p = 1: the one stage holds both ends; they must stay one parameter (the bug: two copies)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = fresh_gpt()
        stage = gpt_stage(model)
    finally:
        dist.destroy_process_group()
    assert stage.embed_tokens.weight is stage.lm_head.weight
    x, y = batch()
    lm_loss(stage(x), y).backward()
    lm_loss(model(x), y).backward()
    torch.testing.assert_close(stage.lm_head.weight.grad, model.lm_head.weight.grad)


def test_launch_rejects_a_function_that_cannot_reach_the_spawned_processes():
    with pytest.raises(TypeError, match="must be picklable"):
        launch(lambda: None, 1)
