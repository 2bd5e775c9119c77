"""lab.parallel.strategies (every row of the strategy table through `train`, its torchrun entry point) and
lab.parallel.launch on 2 gloo processes, plus bad input to every strategy on every rank.

References: one-process `torch.optim.AdamW` on the whole batch. The functions named ``job_*`` (here and in
test_ddp, test_zero, test_tensor_parallel) run on every rank (spawned; these modules are importable there),
all in the one launch of conftest.py, and return plain data; the assertions run in the test process.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist
from torch import nn

from lab.models.gpt import GPT, GPTConfig
from lab.models.loop import lr_at
from lab.models.next_token import random_batch
from lab.parallel.ddp import DataParallel
from lab.parallel.launch import launch
from lab.parallel.pipeline import CostStage, PipelineSchedule, gpt_stage
from lab.parallel.strategies import DISTRIBUTED, MESHED, STRATEGIES, TABLE, TINY, lm_loss, train
from lab.parallel.tensor_parallel import ColumnParallelLinear, RowParallelLinear, tensor_parallel_block
from lab.parallel.zero import ZeroOptimizer

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
    assert set(DISTRIBUTED) | set(MESHED) | {"single"} == set(STRATEGIES) == set(TABLE)  # MESHED: test_mesh
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
    return value_errors(cases)


def value_errors(cases: dict) -> list[str]:
    """"name: message" of the ValueError each case raises ("name: no error" if none), in order."""
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


def test_launch_rejects_a_function_that_cannot_reach_the_spawned_processes():
    with pytest.raises(TypeError, match="must be picklable"):
        launch(lambda: None, 1)
