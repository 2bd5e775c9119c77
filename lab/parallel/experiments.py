"""The chapter's measurements as functions the spawned ranks run (picklable: they live here),
and the helpers that turn their records into tables and plots; `lab.parallel.suite` runs them for ``lab.bench``.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from lab.core.checks import check_choice, check_divisor, check_int
from lab.models.gpt import GPT, GPTConfig
from lab.parallel.comm import CommCounter
from lab.parallel.ddp import DataParallel
from lab.parallel.formulas import bubble_fraction, context_parallel_elements, zero_memory
from lab.parallel.launch import rank_device
from lab.parallel.pipeline import CostStage, PipelineSchedule
from lab.parallel.strategies import DISTRIBUTED, MESHED, lm_loss, train
from lab.params.counting import block_param_count, gpt_param_count


def run_jobs(jobs: list[tuple[Callable, dict]]) -> list:
    """Run ``fn(**kwargs)`` for each job in order on this rank; return their results."""
    return [fn(**kwargs) for fn, kwargs in jobs]


def compare_strategies(strategies: list[str], config: GPTConfig, tokens: torch.Tensor, **train_kwargs) -> dict:
    """`train` with each strategy on the current group: {strategy: record}."""
    return {s: train(s, config, tokens, **train_kwargs) for s in strategies}


def pipeline_timeline(schedules: list[str], n_micros: list[int], t_forward: float, t_backward: float,
                      width: int = 16) -> dict:
    """Run `CostStage`s through each schedule and micro-batch count; {(schedule, m): this rank's events}."""
    stage = CostStage(width, t_forward, t_backward)
    out = {}
    for schedule in schedules:
        for m in n_micros:
            pipe = PipelineSchedule(stage, m, schedule, (1, width), loss_fn=lambda y, t: (y - t).pow(2).mean())
            x = torch.ones(m, width)
            dist.barrier()
            pipe.run(x if dist.get_rank() == 0 else None, x if dist.get_rank() == dist.get_world_size() - 1 else None)
            out[(schedule, m)] = pipe.events
            stage.zero_grad()
    return out


def merge_timelines(per_rank: list[dict]) -> dict:
    """{(schedule, m): events of all stages, times relative to the first start}."""
    merged = {}
    for key in per_rank[0]:
        events = [e for rank in per_rank for e in rank[key]]
        t0 = min(e["start"] for e in events)
        merged[key] = [{**e, "start": e["start"] - t0, "end": e["end"] - t0} for e in events]
    return merged


def measured_bubble(events: list[dict]) -> float:
    """1 − Σ_stages busy time / (p · makespan): the idle share of the stages over the whole step."""
    p = len({e["stage"] for e in events})
    makespan = max(e["end"] for e in events) - min(e["start"] for e in events)
    return 1 - sum(e["end"] - e["start"] for e in events) / (p * makespan)


def max_in_flight(events: list[dict], stage: int) -> int:
    """Most micro-batches whose forward has run and backward has not, on ``stage``."""
    count = peak = 0
    for e in sorted((e for e in events if e["stage"] == stage), key=lambda e: e["start"]):
        count += 1 if e["kind"] == "F" else -1
        peak = max(peak, count)
    return peak


def bubble_table(timelines: dict, p: int) -> list[dict]:
    return [{"schedule": s, "m": m, "measured": measured_bubble(ev), "formula (p-1)/(m+p-1)": bubble_fraction(p, m)}
            for (s, m), ev in timelines.items()]


def plot_timeline(events: list[dict], ax, title: str) -> None:
    """Gantt chart: one row per stage, forward blue, backward orange, micro-batch index in the bar."""
    colors = {"F": "tab:blue", "B": "tab:orange"}
    for e in events:
        ax.barh(e["stage"], e["end"] - e["start"], left=e["start"], color=colors[e["kind"]], edgecolor="black")
        ax.text((e["start"] + e["end"]) / 2, e["stage"], str(e["micro"]), ha="center", va="center", fontsize=7)
    ax.set_yticks(sorted({e["stage"] for e in events}))
    ax.invert_yaxis()
    ax.set_ylabel("stage (rank)")
    ax.set_xlabel("seconds")
    ax.set_title(title)


def scaling_step(config: GPTConfig, tokens: torch.Tensor, steps: int, batch_per_rank: int, seq_len: int) -> dict:
    """DDP throughput at a fixed per-rank batch (weak scaling): tokens/s and exposed communication share.

    Without a process group it measures the one-process step (``single``) as the N = 1 point.
    """
    n = dist.get_world_size() if dist.is_initialized() else 1
    record = train("ddp" if dist.is_initialized() else "single", config, tokens, steps, batch_per_rank * n, seq_len)
    timed = record["step_seconds"][1:] or record["step_seconds"]  # the first step allocates
    step_s = statistics.median(timed)
    return {"world_size": n, "tokens_per_s": batch_per_rank * n * seq_len / step_s, "step_s": step_s,
            "comm_share": record["comm"]["seconds"] / sum(record["step_seconds"])}


def traffic_formula(strategy: str, config: GPTConfig, n: int, batch_size: int, seq_len: int, rank: int = 0,
                    inner: int = 2) -> int:
    """Payload bytes per step the chapter's formulas predict for rank ``rank`` (fp32, Ψ unpadded).

    DDP hands Ψ gradient elements to all-reduce (4Ψ bytes); ZeRO 1–2 Ψ to a
    reduce-scatter and Ψ to an all-gather (2·4Ψ), ZeRO 3 3·4Ψ; TP 4 all-reduces per layer of
    B·T·C floats; PP: across each stage boundary the rank touches, the m micro-batches' activations
    one way and their gradients the other, 2·B·T·C floats (sent or received: both are payload),
    plus the tied embedding all-reduce V·C on the first and last stage. CP: DDP's 4Ψ, and per layer
    `context_parallel_elements`' ring total of K/V blocks and their gradients, each sent and received.
    tp×dp and pp×dp (N/``inner`` replicas of ``inner`` ranks): TP or PP on a replica's B/N_d rows, plus the
    all-reduce of the rank's Ψ_local gradients (`local_param_count`).
    """
    for name, value in (("n", n), ("batch_size", batch_size), ("seq_len", seq_len)):
        check_int(name, value)
    check_int("rank", rank, 0, n - 1)
    psi = gpt_param_count(config)
    btc = batch_size * seq_len * config.d_model * 4
    if strategy in ("ddp", "torch_ddp"):
        return 4 * psi
    if strategy in ("zero1", "zero2"):
        return 2 * 4 * psi
    if strategy == "zero3":
        return 3 * 4 * psi
    if strategy == "tp":
        return 4 * config.n_layer * btc
    if strategy == "pp":
        boundaries = (rank < n - 1) + (rank > 0)
        tied = config.vocab_size * config.d_model * 4 if config.tie_embeddings and rank in (0, n - 1) and n > 1 else 0
        return 2 * boundaries * btc + tied
    if strategy == "cp":
        kv_width = config.n_kv_head * config.head_dim
        ring = context_parallel_elements(batch_size, seq_len, kv_width, n, "ring")["total"]
        return 4 * psi + 2 * 4 * ring * config.n_layer
    if strategy in MESHED:
        i, rows = rank % check_divisor("inner", inner, n, "n"), batch_size // (n // inner)
        return traffic_formula(strategy[:2], config, inner, rows, seq_len, i) + 4 * local_param_count(
            strategy, config, inner, i)
    raise ValueError(f"strategy={strategy!r} has no traffic formula; use one of {DISTRIBUTED + MESHED}")


def local_param_count(strategy: str, config: GPTConfig, inner: int, index: int) -> int:
    """Ψ_local, the parameters rank ``index`` of the inner axis (of N_i = ``inner``) holds, which its replicas
    all-reduce. tp×dp: shard i, the attention and MLP matrices / N_t, the embedding, LM head and norms whole;
    pp×dp: stage i, its L/N_p blocks, the embedding on the first stage, the final norm and the LM head (a
    copy of a tied embedding) on the last."""
    check_choice("strategy", strategy, MESHED)
    check_int("inner", inner)
    check_int("index", index, 0, inner - 1)
    V, C, L, block = config.vocab_size, config.d_model, config.n_layer, block_param_count(config)
    if strategy == "tp×dp":
        return V * C * (1 if config.tie_embeddings else 2) + C + L * ((block - 2 * C) // inner + 2 * C)
    ends = (index == 0) + (index == inner - 1)                      # embedding and LM head on this stage
    return L // inner * block + (index == inner - 1) * C + V * C * (min(ends, 1) if config.tie_embeddings else ends)


def accumulate_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, no_sync: bool = True,
                         loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lm_loss) -> None:
    """Backward passes of k micro-batches: ids x (b, T) int64 and targets y (b, T) split in k along the rows,
    each micro-batch's ``loss_fn(model(x_i), y_i)`` scaled by 1/k, so ``p.grad`` accumulates the gradient of
    the mean loss over the b rows. ``no_sync`` (``model`` a `DataParallel`): the first k−1 under
    ``model.no_sync()``, so that only the last all-reduces; else each micro-batch's backward does."""
    check_divisor("k", k, len(x), "the rows of x")
    for i, (xi, yi) in enumerate(zip(x.chunk(k), y.chunk(k))):
        with model.no_sync() if no_sync and i < k - 1 else contextlib.nullcontext():
            (loss_fn(model(xi), yi) / k).backward()


def accumulation_traffic(config: GPTConfig, batch_size: int, seq_len: int, k: int, seed: int = 0) -> dict:
    """One step's gradients on the current group of N ranks, accumulated over k micro-batches of this rank's
    B/N rows of a random batch (ids drawn with ``seed``) by a `DataParallel` GPT, two ways: the first k−1 under
    ``no_sync`` (one all-reduce of Ψ gradients) and every micro-batch reduced (k all-reduces).

    Returns {"no_sync", "every_micro_batch"}: `CommCounter` summaries; "psi": Ψ; "max_grad_diff": the largest
    |g_no_sync − g_every| (round-off: the two sum the same terms in another order).
    """
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("k", k)):
        check_int(name, value)
    n, rank = dist.get_world_size(), dist.get_rank()
    if batch_size % n:
        raise ValueError(f"batch_size={batch_size} must be divisible by the world size {n}")
    check_divisor("k", k, batch_size // n, "this rank's rows batch_size/N")
    ids = torch.randint(0, config.vocab_size, (batch_size, seq_len + 1), generator=torch.Generator().manual_seed(seed))
    rows = ids[rank * batch_size // n: (rank + 1) * batch_size // n].to(rank_device())
    out, grads = {"psi": gpt_param_count(config)}, []
    for name, no_sync in (("no_sync", True), ("every_micro_batch", False)):
        torch.manual_seed(seed)
        model = DataParallel(GPT(config).to(rank_device()))
        with CommCounter() as counter:
            accumulate_gradients(model, rows[:, :-1], rows[:, 1:], k, no_sync)
        out[name] = counter.summary()
        grads.append([p.grad for p in model.parameters()])
    out["max_grad_diff"] = max(float((a - b).abs().max()) for a, b in zip(*grads))
    return out


def traffic_rows(records: dict, config: GPTConfig, n: int, batch_size: int, seq_len: int, steps: int) -> list[dict]:
    """Measured payload and ring sent bytes per step vs `traffic_formula` (rank 0)."""
    rows = []
    for strategy, rec in records.items():
        if strategy == "torch_ddp":  # its all-reduces run in C++, outside CommCounter
            continue
        measured = rec["comm"]["payload_bytes"] / steps
        formula = traffic_formula(strategy, config, n, batch_size, seq_len)
        rows.append({"strategy": strategy, "payload MB/step": measured / 1e6, "formula MB/step": formula / 1e6,
                     "ratio": measured / formula, "sent MB/step (ring)": rec["comm"]["sent_bytes"] / steps / 1e6})
    return rows


def memory_rows(records: dict, config: GPTConfig, n: int) -> list[dict]:
    """Bytes per rank (rank 0) for DDP (stage 0) and ZeRO 1–3: held between steps against `zero_memory` (fp32
    Adam: 4, 4, K = 8), and the peak of training state within a step (`strategies.peak_state_bytes`)."""
    psi = gpt_param_count(config)
    rows = []
    for stage, strategy in enumerate(("ddp", "zero1", "zero2", "zero3")):
        formula = zero_memory(psi, n, stage, param_bytes=4, grad_bytes=4, k=8)
        measured = records[strategy]["memory"]
        rows.append({"stage": stage, **{f"{k} (MB)": measured[k] / 1e6 for k in ("params", "grads", "optimizer")},
                     **{f"{k} formula (MB)": formula[k] / 1e6 for k in ("params", "grads", "optimizer")},
                     "ratio": measured["total"] / formula["total"],
                     "peak in step (MB)": records[strategy]["peak_state_bytes"] / 1e6})
    return rows
