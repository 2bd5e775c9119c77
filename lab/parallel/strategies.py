"""Every strategy of chapter 5 as a row of one table, trained by the book's one loop (`lab.models.loop.train`).

    torchrun --nproc-per-node 2 -m lab.parallel.strategies --strategy zero2 --steps 50
    python -m lab.parallel.strategies --strategy tp --nproc 2      # spawns the processes itself (lab.parallel.launch)

Each step draws the same global batch (B, T) on every rank (same generator seed), so all
strategies see identical data. A `Strategy` row says what differs between them:

    strategy    module this rank runs        optimizer            rows of the batch     logged loss
    single      the GPT                      AdamW                all                   its own
    ddp         DataParallel(GPT)            AdamW                [r·B/N, (r+1)·B/N)    mean over ranks
    torch_ddp   DistributedDataParallel      AdamW                [r·B/N, (r+1)·B/N)    mean over ranks
    zero1-3     the GPT                      ZeroOptimizer(k)     [r·B/N, (r+1)·B/N)    mean over ranks
    tp          tensor_parallel_gpt(GPT)     AdamW                all                   its own (equal)
    pp          gpt_stage(GPT)               AdamW                all: stage 0 ids,     the last stage's
                                                                  last stage targets
    cp          DataParallel(                AdamW                all rows, the         mean over ranks
                 context_parallel_gpt(GPT))                       zig-zag positions
                                                                  of rank r
    tp×dp       tensor_data_parallel_gpt     AdamW                rows of replica o     mean over ranks
    pp×dp       pipeline_data_parallel_stage AdamW                rows of replica o     mean over ranks

The last two are 2-D (`lab.parallel.mesh`): N = N_d · ``inner`` ranks, rank r = o·inner + i holding shard
or stage i of replica o, which trains on rows [o·B/N_d, (o+1)·B/N_d).

Pipeline parallelism runs forward and backward together in `PipelineSchedule.run` (m
micro-batches), so its loss function back-propagates itself and sends the last stage's loss to
every stage. The optimizer is AdamW (β = (0.9,
0.95)) with one parameter group, the same weight decay on every parameter (ZeRO flattens each
unit into one shard), no gradient clipping (a global norm would need its own collective), and
`lab.models.loop.lr_at`'s warm-up + cosine schedule. ``single`` is the one-process reference. On a GPU
the forward runs under bf16 autocast.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lab.core.checks import check_choice, check_divisor, check_int, check_number, check_tensor
from lab.models.gpt import GPT, GPTConfig
from lab.models.loop import BETAS, LossFn, Optim
from lab.models.loop import train as train_loop
from lab.models.next_token import _lm_batch_loss, _random_batch, lm_loss
from lab.parallel.comm import CommCounter
from lab.parallel.context_parallel import context_parallel_gpt, sequence_positions
from lab.parallel.ddp import DataParallel
from lab.parallel.launch import init_from_env, launch, rank_device
from lab.parallel.mesh import Mesh, build_mesh, pipeline_data_parallel_stage, tensor_data_parallel_gpt
from lab.parallel.pipeline import SCHEDULES, PipelineSchedule, gpt_stage
from lab.parallel.tensor_parallel import tensor_parallel_gpt
from lab.parallel.zero import ZeroOptimizer
from lab.params.measured_memory import storage_bytes

TINY = GPTConfig(vocab_size=8192, context_length=64, d_model=64, n_layer=2, n_head=4, n_kv_head=2, d_ff=176)

__all__ = ["DISTRIBUTED", "MESHED", "STRATEGIES", "Strategy", "TABLE", "TINY", "held_bytes", "lm_loss", "main",
           "peak_state_bytes", "train"]


@dataclass(frozen=True)
class Setup:
    """What the rows read from one call of `train`."""

    config: GPTConfig
    batch_size: int
    seq_len: int
    n_micro: int
    schedule: str
    bucket_cap_mb: float
    adamw: dict                                   # lr, betas, weight_decay
    mesh: Mesh | None = None                      # the 2-D strategies' groups


def _same(model: GPT, setup: Setup) -> nn.Module:
    return model


def _ddp(model: GPT, setup: Setup) -> nn.Module:
    return DataParallel(model, bucket_cap_mb=setup.bucket_cap_mb)


def _context_parallel(model: GPT, setup: Setup) -> nn.Module:
    """Each rank runs its zig-zag positions of every sequence; the replicated parameters' gradients averaged."""
    return DataParallel(context_parallel_gpt(model, layout="zigzag"), bucket_cap_mb=setup.bucket_cap_mb)


def _torch_ddp(model: GPT, setup: Setup) -> nn.Module:
    return nn.parallel.DistributedDataParallel(model, bucket_cap_mb=setup.bucket_cap_mb)


def _adamw(module: nn.Module, setup: Setup) -> torch.optim.Optimizer:
    return torch.optim.AdamW(module.parameters(), **setup.adamw)


def _zero(stage: int) -> Callable[[nn.Module, Setup], ZeroOptimizer]:
    return lambda module, setup: ZeroOptimizer(module, torch.optim.AdamW, stage, **setup.adamw)


def _lm_loss_fn(module: nn.Module, setup: Setup) -> LossFn:
    return _lm_batch_loss


def _pipeline_loss_fn(module: nn.Module, setup: Setup) -> LossFn:
    """L of this rank's rows through `PipelineSchedule.run` (forward and backward) on the pipeline group, sent from
    the last stage to every stage (plain torch.distributed: not counted as traffic). Under pp×dp (``module`` a
    `DataParallel`) the m micro-batches accumulate under ``no_sync`` and are averaged over the replicas once."""
    dp = module if isinstance(module, DataParallel) else None
    stage, group = (dp.module, setup.mesh.inner_group) if dp else (module, None)
    rows = setup.batch_size // (setup.mesh.outer if dp else 1)
    act_shape = (rows // setup.n_micro, setup.seq_len, setup.config.d_model)
    pipe = PipelineSchedule(stage, setup.n_micro, setup.schedule, act_shape, loss_fn=lm_loss,
                            act_dtype=next(stage.parameters()).dtype, group=group)
    last = dist.get_global_rank(group, pipe.p - 1) if group else pipe.p - 1

    def loss_fn(module: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        with dp.no_sync() if dp else contextlib.nullcontext():
            loss = pipe.run(x if pipe.s == 0 else None, y if pipe.s == pipe.p - 1 else None)
        if dp:
            dp.reduce_gradients()
        loss = torch.tensor(0.0 if loss is None else loss, device=x.device)
        dist.broadcast(loss, src=last, group=group)
        return loss

    return loss_fn


def _own_loss(loss: torch.Tensor) -> float:
    return loss.item()


def _mean_over_ranks(loss: torch.Tensor) -> float:
    """The global-batch mean from the ranks' shard means (plain torch.distributed: not counted as traffic)."""
    loss = loss.float().clone()
    dist.all_reduce(loss)
    return loss.item() / dist.get_world_size()


@dataclass(frozen=True)
class Strategy:
    """One row of the table: how `train` runs a strategy on rank r of N."""

    wrap: Callable[[GPT, Setup], nn.Module] = _same                 # the module this rank trains
    optimizer: Callable[[nn.Module, Setup], torch.optim.Optimizer] = _adamw
    shards_batch: bool = False                                       # its replica's rows of B, else all B
    shards_sequence: bool = False                                    # rank r's zig-zag positions, else all T
    log_loss: Callable[[torch.Tensor], float] = _own_loss            # this rank's L → the global-batch loss
    loss_fn: Callable[[nn.Module, Setup], LossFn] = _lm_loss_fn       # the loop's loss_fn for the module
    backward: bool = True                                            # False: loss_fn back-propagates itself
    needs_group: bool = True                                         # runs on a process group of N ranks
    mesh: bool = False                                               # 2-D: N_d replicas of ``inner`` ranks


TABLE: dict[str, Strategy] = {
    "single": Strategy(needs_group=False),
    "ddp": Strategy(wrap=_ddp, shards_batch=True, log_loss=_mean_over_ranks),
    "torch_ddp": Strategy(wrap=_torch_ddp, shards_batch=True, log_loss=_mean_over_ranks),
    **{f"zero{k}": Strategy(optimizer=_zero(k), shards_batch=True, log_loss=_mean_over_ranks) for k in (1, 2, 3)},
    "tp": Strategy(wrap=lambda model, setup: tensor_parallel_gpt(model)),
    "pp": Strategy(wrap=lambda model, setup: gpt_stage(model), loss_fn=_pipeline_loss_fn, backward=False),
    "cp": Strategy(wrap=_context_parallel, shards_sequence=True, log_loss=_mean_over_ranks),
    "tp×dp": Strategy(wrap=lambda model, setup: tensor_data_parallel_gpt(model, setup.mesh, setup.bucket_cap_mb),
                      shards_batch=True, log_loss=_mean_over_ranks, mesh=True),
    "pp×dp": Strategy(wrap=lambda model, setup: pipeline_data_parallel_stage(model, setup.mesh, setup.bucket_cap_mb),
                      shards_batch=True, log_loss=_mean_over_ranks, loss_fn=_pipeline_loss_fn, backward=False,
                      mesh=True),
}
STRATEGIES = tuple(TABLE)
DISTRIBUTED = tuple(name for name, row in TABLE.items() if row.needs_group and not row.mesh)  # 1-D, on any N ranks
MESHED = tuple(name for name, row in TABLE.items() if row.mesh)                              # 2-D, N = N_d·inner


def held_bytes(tensors: dict[str, list[torch.Tensor]]) -> dict[str, int]:
    """Storage bytes per part (each storage once): {"params", "grads", "optimizer", "total"}."""
    out = {k: storage_bytes(v) for k, v in tensors.items()}
    out["total"] = sum(out.values())
    return out


def held_tensors(module: nn.Module, opt: torch.optim.Optimizer | ZeroOptimizer) -> dict[str, list[torch.Tensor]]:
    """The tensors this rank holds between steps: parameters, gradients, optimizer state."""
    if isinstance(opt, ZeroOptimizer):
        return opt.held_tensors()
    params = list(module.parameters())
    return {"params": params, "grads": [p.grad for p in params if p.grad is not None],
            "optimizer": [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.dim()]}


def peak_state_bytes(module: nn.Module, opt: torch.optim.Optimizer | ZeroOptimizer) -> int:
    """The most training-state bytes this rank held at once during the steps (activations not counted).

    ZeRO: `ZeroOptimizer.peak_bytes`, metered at every gather and reduction. The other strategies keep
    their whole state across the step, so after the last step it is all there: `held_tensors`, plus
    `DataParallel`'s bucket buffers (a second copy of the gradients, in fp32).
    """
    if isinstance(opt, ZeroOptimizer):
        return opt.peak_bytes
    buckets = [b.flat for b in module.buckets] if isinstance(module, DataParallel) else []
    return storage_bytes([t for tensors in held_tensors(module, opt).values() for t in tensors] + buckets)


def train(strategy: str, config: GPTConfig, tokens: torch.Tensor, steps: int, batch_size: int, seq_len: int,
          lr: float = 3e-3, warmup: int = 5, weight_decay: float = 0.1, seed: int = 0, n_micro: int = 2,
          schedule: str = "1f1b", bucket_cap_mb: float = 25.0, inner: int = 2, return_state: bool = False) -> dict:
    """Train a fresh ``GPT(config)`` (seed ``seed``) for ``steps`` steps with ``strategy`` (a row of `TABLE`).

    Runs on the current process group (none for ``single``); the 2-D rows (`MESHED`) on a mesh of N/``inner``
    replicas of ``inner`` ranks. Returns on every rank the loop's record (``loss`` per step, the global-batch
    mean; ``lr``; ``step_seconds``) plus ``comm`` (`CommCounter` summary of all steps), ``memory`` (`held_bytes`
    of this rank after the last step: what it keeps between steps), ``peak_state_bytes`` (`peak_state_bytes`)
    and ``world_size``; with ``return_state`` also ``state``, this rank's parameters by name after the last step.
    """
    _check_train_args(strategy, config, tokens, steps, batch_size, seq_len, seed, n_micro, schedule, bucket_cap_mb)
    check_int("inner", inner)
    check_choice("return_state", return_state, (False, True))
    optim = Optim(lr, warmup, weight_decay, grad_clip=None)
    row = TABLE[strategy]
    if row.needs_group and not dist.is_initialized():
        raise ValueError(f"strategy={strategy!r} needs a process group: run it under torchrun or "
                         "lab.parallel.launch, or use strategy='single'")
    n, rank = (dist.get_world_size(), dist.get_rank()) if row.needs_group else (1, 0)
    mesh, rows = _replica(row, n, rank, inner, batch_size, n_micro)
    cols = sequence_positions(seq_len, n, rank, "zigzag") if row.shards_sequence else slice(None)
    setup = Setup(config, batch_size, seq_len, n_micro, schedule, bucket_cap_mb,
                  dict(lr=lr, betas=BETAS, weight_decay=weight_decay), mesh)
    torch.manual_seed(seed)
    module = row.wrap(GPT(config).to(rank_device()), setup)
    opt = row.optimizer(module, setup)
    loss_fn = row.loss_fn(module, setup)
    gen = torch.Generator().manual_seed(seed + 1)
    batches = ((x[rows][:, cols], y[rows][:, cols])
               for x, y in (_random_batch(tokens, batch_size, seq_len, gen) for _ in range(steps)))
    with CommCounter() as counter:
        record = train_loop(module, batches, loss_fn, steps, optim=optim, optimizer=opt, backward=row.backward,
                            log_loss=row.log_loss, progress=False)
    record.update(comm=counter.summary(), memory=held_bytes(held_tensors(module, opt)),
                  peak_state_bytes=peak_state_bytes(module, opt), world_size=n)
    if return_state:
        record["state"] = {name: p.detach().clone() for name, p in module.named_parameters()}
    return record


def _replica(row: Strategy, n: int, rank: int, inner: int, batch_size: int, n_micro: int) -> tuple[Mesh | None, slice]:
    """The 2-D rows' mesh (a collective; None for the others) and the rows of the batch this rank trains on:
    its replica's [o·B/N_d, (o+1)·B/N_d) (N_d = N, o = r on a 1-D group) when ``row`` shards the batch."""
    replicas = n // check_divisor("inner", inner, n, "the world size") if row.mesh else n
    if row.shards_batch and batch_size % replicas:
        raise ValueError(f"batch_size={batch_size} must be divisible by the {replicas} data-parallel replicas")
    if row.mesh and not row.backward:          # pp×dp: a replica's rows in n_micro micro-batches
        check_divisor("n_micro", n_micro, batch_size // replicas, "the replica's rows batch_size/N_d")
    mesh = build_mesh(replicas, inner) if row.mesh else None
    o = mesh.outer_rank if mesh else rank
    rows = slice(o * batch_size // replicas, (o + 1) * batch_size // replicas) if row.shards_batch else slice(None)
    return mesh, rows


def _check_train_args(strategy: str, config: GPTConfig, tokens: torch.Tensor, steps: int, batch_size: int,
                      seq_len: int, seed: int, n_micro: int, schedule: str, bucket_cap_mb: float) -> None:
    """`train`'s arguments, all checked before any process group is looked at."""
    check_choice("strategy", strategy, STRATEGIES)
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a GPTConfig, got {config!r:.80} ({type(config).__name__})")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("seq_len", seq_len)):
        check_int(name, value)
    check_int("seq_len", seq_len, 1, config.context_length)
    check_int("seed", seed, None)
    check_int("n_micro", n_micro)
    if strategy == "pp":
        check_divisor("n_micro", n_micro, batch_size, "batch_size")
    check_choice("schedule", schedule, SCHEDULES)
    check_number("bucket_cap_mb", bucket_cap_mb, 0.0, closed=(False, True))
    if len(check_tensor("tokens", tokens, 1, (torch.int64,))) < seq_len + 2:
        raise ValueError(f"tokens has {len(tokens)} entries; need more than seq_len+1={seq_len + 1}")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= config.vocab_size:
        raise ValueError(f"tokens must hold ids in [0, {config.vocab_size}) (config.vocab_size), got [{low}, {high}]")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategy", choices=DISTRIBUTED + MESHED, required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--micro-batches", type=int, default=2)
    parser.add_argument("--schedule", choices=("gpipe", "1f1b"), default="1f1b")
    parser.add_argument("--model", choices=("tiny", "pretrained-size"), default="tiny",
                        help="tiny: 2 layers, C = 64; pretrained-size: the book's 6.5M-parameter config")
    parser.add_argument("--data", choices=("corpus", "random"), default="corpus")
    parser.add_argument("--nproc", type=int, default=2, help="processes to spawn when not run under torchrun")
    args = parser.parse_args(argv)
    config = TINY if args.model == "tiny" else GPTConfig()
    if args.data == "corpus":
        from lab.data import tokenize_split
        from lab.models import load_tokenizer

        tokens = tokenize_split("train", load_tokenizer())
    else:
        tokens = torch.randint(0, config.vocab_size, (100_000,), generator=torch.Generator().manual_seed(0))
    kwargs = dict(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                  n_micro=args.micro_batches, schedule=args.schedule)
    if "WORLD_SIZE" in os.environ:
        init_from_env()
        record = train(args.strategy, config, tokens, **kwargs)
        if dist.get_rank() == 0:
            print(json.dumps({"strategy": args.strategy, **record}))
        dist.destroy_process_group()
    else:
        records = launch(functools.partial(train, **kwargs), args.nproc, args.strategy, config, tokens)
        print(json.dumps({"strategy": args.strategy, **records[0]}))


if __name__ == "__main__":
    main()
