"""One training loop for every strategy of chapter 5, and the ``torchrun`` entry point.

    torchrun --nproc-per-node 2 -m lab.dist.train --strategy zero2 --steps 50
    python -m lab.dist.train --strategy tp --nproc 2      # spawns the processes itself (lab.dist.launch)

Each step draws the same global batch (B, T) on every rank (same generator seed), so all
strategies see identical data: data-parallel strategies (``ddp``, ``torch_ddp``, ``zero1-3``)
give rank r the rows [r·B/N, (r+1)·B/N); tensor parallelism gives every rank the whole batch;
pipeline parallelism feeds the batch to stage 0 in m micro-batches and the targets to the last.
The optimizer is AdamW (β = (0.9, 0.95), the same weight decay on every parameter, no gradient
clipping) with `lab.models.train.lr_at`'s warm-up + cosine schedule. ``single`` is the
one-process reference. On a GPU the forward runs under bf16 autocast.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from lab.dist.comm import CommCounter
from lab.dist.ddp import DataParallel
from lab.dist.launch import init_from_env, launch, rank_device
from lab.dist.pipeline import PipelineSchedule, gpt_stage
from lab.dist.tensor_parallel import tensor_parallel_gpt
from lab.dist.zero import ZeroOptimizer
from lab.models.gpt import GPT, GPTConfig
from lab.models.train import lr_at, random_batch
from lab.params.memory import storage_bytes

STRATEGIES = ("single", "ddp", "torch_ddp", "zero1", "zero2", "zero3", "tp", "pp")
TINY = GPTConfig(vocab_size=8192, context_length=64, d_model=64, n_layer=2, n_head=4, n_kv_head=2, d_ff=176)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; logits (b, T, V), targets (b, T) int64."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def held_bytes(tensors: dict[str, list[torch.Tensor]]) -> dict[str, int]:
    """Storage bytes per part (each storage once): {"params", "grads", "optimizer", "total"}."""
    out = {k: storage_bytes(v) for k, v in tensors.items()}
    out["total"] = sum(out.values())
    return out


def _optimizer_state(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.dim() > 0]


def train(strategy: str, config: GPTConfig, tokens: torch.Tensor, steps: int, batch_size: int, seq_len: int,
          lr: float = 3e-3, warmup: int = 5, weight_decay: float = 0.1, seed: int = 0, n_micro: int = 2,
          schedule: str = "1f1b", bucket_cap_mb: float = 25.0) -> dict:
    """Train a fresh ``GPT(config)`` (seed ``seed``) for ``steps`` steps with ``strategy``.

    Runs on the current process group (none for ``single``). Returns on every rank:
    ``loss`` (per step, the global-batch mean), ``step_seconds``, ``comm`` (`CommCounter`
    summary of all steps), ``memory`` (`held_bytes` of this rank after the last step),
    ``world_size``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not allowed; use one of {STRATEGIES}")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an int >= 1")
    n = 1 if strategy == "single" else dist.get_world_size()
    rank = 0 if strategy == "single" else dist.get_rank()
    if strategy in ("ddp", "torch_ddp", "zero1", "zero2", "zero3") and batch_size % n:
        raise ValueError(f"batch_size={batch_size} must be divisible by the world size {n}")
    device = rank_device()
    torch.manual_seed(seed)
    model = GPT(config).to(device)
    adamw = dict(lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    rows = slice(rank * batch_size // n, (rank + 1) * batch_size // n) if strategy not in ("single", "tp", "pp") \
        else slice(None)
    pipe = None
    if strategy.startswith("zero"):
        opt = ZeroOptimizer(model, torch.optim.AdamW, stage=int(strategy[-1]), **adamw)
    else:
        if strategy == "ddp":
            model = DataParallel(model, bucket_cap_mb=bucket_cap_mb)
        elif strategy == "torch_ddp":
            model = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=bucket_cap_mb)
        elif strategy == "tp":
            model = tensor_parallel_gpt(model)
        elif strategy == "pp":
            model = gpt_stage(model)
            pipe = PipelineSchedule(model, n_micro, schedule, (batch_size // n_micro, seq_len, config.d_model),
                                    loss_fn=lm_loss)
        opt = torch.optim.AdamW(model.parameters(), **adamw)
    gen = torch.Generator().manual_seed(seed + 1)
    record: dict = {"loss": [], "step_seconds": [], "world_size": n}
    with CommCounter() as counter:
        for step in range(steps):
            start = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps, lr, warmup)
            x, y = random_batch(tokens, batch_size, seq_len, gen)
            x, y = x[rows].to(device), y[rows].to(device)
            opt.zero_grad()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                if pipe is not None:
                    loss = pipe.run(x if rank == 0 else None, y if rank == n - 1 else None)
                    loss = torch.tensor(0.0 if loss is None else loss, device=device)
                else:
                    loss = lm_loss(model(x), y)
            if pipe is None:
                loss.backward()
            opt.step()
            record["step_seconds"].append(time.perf_counter() - start)
            record["loss"].append(_global_loss(loss.detach(), strategy, n))
    record["comm"] = counter.summary()
    if strategy.startswith("zero"):
        record["memory"] = held_bytes(opt.held_tensors())
    else:
        params = list(model.parameters())
        record["memory"] = held_bytes({"params": params, "grads": [p.grad for p in params if p.grad is not None],
                                       "optimizer": _optimizer_state(opt)})
    return record


def _global_loss(loss: torch.Tensor, strategy: str, n: int) -> float:
    """The global-batch loss for logging (plain torch.distributed: not counted as training traffic)."""
    if strategy in ("single", "tp"):
        return loss.item()
    loss = loss.float().clone()
    if strategy == "pp":
        dist.broadcast(loss, src=n - 1)
        return loss.item()
    dist.all_reduce(loss)
    return loss.item() / n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategy", choices=STRATEGIES[1:], required=True)
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
