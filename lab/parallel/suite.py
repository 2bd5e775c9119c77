"""Chapter 5's benchmark suite (``python -m lab.bench parallel``): each strategy's training step on the local devices."""

from __future__ import annotations

import statistics
import time

import torch
from tqdm.auto import tqdm

from lab.models.gpt import GPTConfig
from lab.parallel.experiments import compare_strategies, run_jobs, traffic_formula
from lab.parallel.launch import launch
from lab.parallel.strategies import DISTRIBUTED, TINY, train


def _tokens(config: GPTConfig) -> tuple[torch.Tensor, str]:
    try:
        from lab.data import tokenize_split
        from lab.models import load_tokenizer

        return tokenize_split("train", load_tokenizer())[:1_000_000], "corpus train split"
    except (OSError, RuntimeError) as exc:  # no corpus here: the step's cost does not depend on the text
        gen = torch.Generator().manual_seed(0)
        return torch.randint(0, config.vocab_size, (1_000_000,), generator=gen), f"random tokens ({exc})"


def run(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """The chapter's training step on this machine, JSON-ready.

    GPU: every strategy that fits the GPU count on the book's pretrained-size config
    (6.5M parameters; bf16 autocast) with nccl, one process per GPU: tokens/s, step time,
    exposed communication share, bytes per step, loss. With one GPU, the full step runs on one
    nccl rank and ``multi_gpu`` says that multi-GPU figures are not available.
    CPU (gloo, 2 processes): the tiny config, losses vs one process, traffic and memory ratios.
    """
    steps = 5 if quick else 30
    if device.type == "cuda":
        n = torch.cuda.device_count()
        config, batch_per_rank, seq_len = GPTConfig(), 16, 256
        strategies = ["ddp"] if n == 1 else ["ddp", "zero1", "zero2", "zero3"]
        if n > 1 and not (config.n_head % n or config.n_kv_head % n or config.d_ff % n):
            strategies.append("tp")
        if n > 1 and config.n_layer % n == 0:
            strategies.append("pp")
        backend = "nccl"
    else:
        n, config, batch_per_rank, seq_len = 2, TINY, 4, 64
        strategies, backend = list(DISTRIBUTED), "gloo"
    tokens, data = _tokens(config)
    kwargs = dict(steps=steps, batch_size=batch_per_rank * n, seq_len=seq_len)
    out = {"device_type": device.type, "world_size": n, "backend": backend, "data": data, "config": config.to_dict(),
           **kwargs, "strategies": {}}
    if device.type == "cuda" and n == 1:
        out["multi_gpu"] = "not available: this machine has 1 GPU; the step ran on one nccl rank"
    bar = tqdm(total=1, desc=f"dist {backend} x{n}", disable=not progress)
    start = time.perf_counter()
    records = launch(run_jobs, n, [(compare_strategies, dict(strategies=strategies, config=config, tokens=tokens,
                                                             **kwargs))], backend=backend, timeout=300)[0][0]
    bar.update()
    bar.close()
    single = train("single", config, tokens, **kwargs) if device.type == "cpu" else None
    for s, rec in records.items():
        timed = rec["step_seconds"][1:]
        entry = {"loss": rec["loss"], "step_ms": 1e3 * statistics.median(timed),
                 "tokens_per_s": kwargs["batch_size"] * seq_len / statistics.median(timed),
                 "comm_share": rec["comm"]["seconds"] / sum(rec["step_seconds"]),
                 "payload_bytes_per_step": rec["comm"]["payload_bytes"] / steps,
                 "sent_bytes_per_step": rec["comm"]["sent_bytes"] / steps, "memory_rank0": rec["memory"]}
        if s != "torch_ddp":
            entry["payload_over_formula"] = entry["payload_bytes_per_step"] / traffic_formula(
                s, config, n, kwargs["batch_size"], seq_len)
        if single is not None:
            entry["max_abs_loss_diff_vs_single"] = max(abs(a - b) for a, b in zip(rec["loss"], single["loss"]))
        out["strategies"][s] = entry
    out["seconds"] = time.perf_counter() - start
    return out
