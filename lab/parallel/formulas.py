"""Closed forms of chapter 5: ring collectives, ZeRO memory and traffic, pipeline bubble,
tensor-parallel and context-parallel traffic, and a memory/time plan for large models on H100s.

The H100's figures in `H100_SXM` are datasheet peaks, not measurements: memory and dense bf16 rate
from `lab.core.ceilings.DATASHEETS` (NVIDIA's H100 page), the link bandwidths from NVIDIA's H100 and
DGX H100 pages (`H100_LINKS_SOURCE`); ``GPUSpec.source`` says so wherever a plan is shown.

Symbols (`book/notation.md`): Ψ parameters, N (or N_d) data-parallel ranks, K optimizer bytes per
parameter, N_t tensor-parallel ranks (``tp``), N_p pipeline stages (``pp``), m micro-batches, L layers,
C model width (``d_model``), T sequence length (``seq_len``), B_μ micro-batch size (``micro_batch``),
N_c context-parallel ranks (``cp``), σ bytes per element. Megatron-LM and Korthikanti et al. write h, s
and b for C, T and B_μ.
"""

from __future__ import annotations

from dataclasses import dataclass

from lab.core.ceilings import DATASHEETS
from lab.core.checks import check_choice, check_int, check_list, check_number

STAGES = (0, 1, 2, 3)


def zero_memory(psi: int, n: int, stage: int, param_bytes: int = 2, grad_bytes: int = 2, k: int = 12) -> dict:
    """Bytes per rank of parameters, gradients and optimizer state under ZeRO ``stage`` (0 = plain DP).

    With σ_w = ``param_bytes`` and σ_g = ``grad_bytes`` per element and K = ``k``:
    stage 0: (σ_w + σ_g + K)Ψ; 1: σ_wΨ + σ_gΨ + KΨ/N; 2: σ_wΨ + (σ_g + K)Ψ/N; 3: (σ_w + σ_g + K)Ψ/N.
    Defaults are the paper's mixed-precision Adam: σ_w = σ_g = 2 (fp16), K = 12 (fp32 master
    weights, m and v). For fp32 Adam without master weights: σ_w = σ_g = 4, K = 8.
    """
    check_int("psi", psi)
    check_int("n", n)
    check_choice("stage", stage, STAGES)
    for name, value in (("param_bytes", param_bytes), ("grad_bytes", grad_bytes), ("k", k)):
        check_number(name, value, low=0)
    out = {"params": param_bytes * psi / (n if stage >= 3 else 1),
           "grads": grad_bytes * psi / (n if stage >= 2 else 1),
           "optimizer": k * psi / (n if stage >= 1 else 1)}
    out["total"] = sum(out.values())
    return out


def zero_traffic_elements(psi: int, stage: int) -> int:
    """Elements one rank hands to collectives per step: 2Ψ (DP all-reduce, ZeRO 1–2: RS + AG), 3Ψ (ZeRO 3)."""
    check_int("psi", psi)
    check_choice("stage", stage, STAGES)
    return (3 if stage == 3 else 2) * psi


def ring_factor(n: int) -> float:
    """(N−1)/N: the share of a reduce-scatter's or all-gather's full payload each rank sends."""
    check_int("n", n)
    return (n - 1) / n


def bubble_fraction(pp: int, m: int, chunks: int = 1) -> float:
    """(N_p−1)/(v·m+N_p−1): idle share of each stage with equal stage costs.

    ``pp`` = N_p pipeline stages, ``m`` micro-batches per step, ``chunks`` = v model chunks per
    stage: v = 1 for GPipe and 1F1B, v > 1 for interleaved 1F1B, whose step takes
    (m + (N_p−1)/v)(t_f+t_b) (a bubble of (N_p−1)/(v·m) of the ideal time m(t_f+t_b)).
    """
    check_int("pp", pp)
    check_int("m", m)
    check_int("chunks", chunks)
    return (pp - 1) / (chunks * m + pp - 1)


def tp_allreduce_bytes_per_layer(micro_batch: int, seq_len: int, d_model: int, bytes_per_element: int = 2) -> int:
    """Payload of one training step's tensor-parallel all-reduces for one layer and micro-batch:
    2 forward + 2 backward, each of the (B_μ, T, C) activations, σ = ``bytes_per_element`` each:
    4·B_μ·T·C·σ bytes."""
    for name, value in (("micro_batch", micro_batch), ("seq_len", seq_len), ("d_model", d_model),
                        ("bytes_per_element", bytes_per_element)):
        check_int(name, value)
    return 4 * micro_batch * seq_len * d_model * bytes_per_element


CP_METHODS = ("ring", "allgather")


def context_parallel_elements(micro_batch: int, seq_len: int, kv_width: int, cp: int, method: str = "ring") -> dict:
    """Elements one rank sends per layer and micro-batch so that its queries see every key and value, when the
    sequence is split over N_c = ``cp`` ranks, and the elements of K and V it keeps for backward.

    One rank's K and V are |KV| = 2·B_μ·(T/N_c)·``kv_width`` elements (``kv_width`` = H_kv·D).
    ``"ring"`` (`lab.parallel.ring_attention`): (N_c−1)|KV| forward, 2(N_c−1)|KV| backward (the blocks
    again, and their gradients riding along); keeps its own |KV|. ``"allgather"``
    (`lab.parallel.allgather_attention`): an all-gather forward and a reduce-scatter backward, (N_c−1)|KV|
    each; keeps all N_c|KV|. Returns {"forward", "backward", "total", "saved"}.
    """
    for name, value in (("micro_batch", micro_batch), ("seq_len", seq_len), ("kv_width", kv_width), ("cp", cp)):
        check_int(name, value)
    check_choice("method", method, CP_METHODS)
    if seq_len % cp:
        raise ValueError(f"seq_len={seq_len} must be divisible by cp={cp}")
    kv = 2 * micro_batch * seq_len // cp * kv_width
    forward = (cp - 1) * kv
    backward = (2 if method == "ring" else 1) * (cp - 1) * kv
    return {"forward": forward, "backward": backward, "total": forward + backward,
            "saved": kv if method == "ring" else cp * kv}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    n_params: float  # Ψ
    n_layer: int     # L
    d_model: int     # C

    def __post_init__(self) -> None:
        check_number("n_params", self.n_params, low=0, closed=(False, True))
        check_int("n_layer", self.n_layer)
        check_int("d_model", self.d_model)


@dataclass(frozen=True)
class GPUSpec:
    name: str
    memory_bytes: float
    bf16_flops: float       # dense peak
    intra_node_bw: float    # bytes/s one GPU sends within a node (NVLink)
    inter_node_bw: float    # bytes/s one GPU sends across nodes (InfiniBand)
    gpus_per_node: int
    source: str             # where the figures come from (datasheets, not measurements)

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "bf16_flops", "intra_node_bw", "inter_node_bw"):
            check_number(name, getattr(self, name), low=0, closed=(False, True))
        check_int("gpus_per_node", self.gpus_per_node)


LLAMA2_7B = ModelSpec("Llama-2-7B", 6.74e9, 32, 4096)
LLAMA2_70B = ModelSpec("Llama-2-70B", 68.98e9, 80, 8192)

# NVLink 4: 900 GB/s per GPU over both directions, 450 GB/s each way (NVIDIA H100 page); InfiniBand NDR:
# one 400 Gb/s ConnectX-7 port per GPU, 50 GB/s, and 8 GPUs per node (NVIDIA DGX H100 page).
H100_LINKS_SOURCE = ("datasheet (NVLink 900 GB/s per GPU, both directions: "
                     "https://www.nvidia.com/en-us/data-center/h100/; InfiniBand 400 Gb/s per GPU, "
                     "8 GPUs per node: https://www.nvidia.com/en-us/data-center/dgx-h100/)")
_H100 = DATASHEETS["h100-sxm5"]
H100_SXM = GPUSpec(_H100.name, memory_bytes=float(_H100.memory.split(" GB")[0]) * 1e9,
                   bf16_flops=_H100.bf16_flops, intra_node_bw=900e9 / 2, inter_node_bw=400e9 / 8,
                   gpus_per_node=8, source=f"{_H100.source}; {H100_LINKS_SOURCE}")


def _check_specs(model, gpu) -> None:
    if not isinstance(model, ModelSpec) or not isinstance(gpu, GPUSpec):
        raise TypeError(f"model and gpu must be a ModelSpec and a GPUSpec, got {type(model).__name__} and "
                        f"{type(gpu).__name__}")


def mesh_traffic(psi_local: float, tp: int, pp: int, dp: int, stage: int, layers: int, micro_batch: int, m: int,
                 seq_len: int, d_model: int, bytes_per_element: int = 2, checkpointing: bool = False,
                 zero_stage: int = 0) -> dict[str, float]:
    """Bytes one rank of an N_d × N_p × N_t mesh sends per training step, by its process groups (ring algorithms).

    N_t = ``tp``, N_p = ``pp``, N_d = ``dp``; s = ``stage``; ℓ = ``layers`` (on the stage); B_μ = ``micro_batch``,
    m micro-batches; σ = ``bytes_per_element``; Ψ_local = ``psi_local``, the rank's parameters (≈ Ψ/(N_t·N_p)):

        tp: 2(N_t−1)/N_t · a·ℓ·m · B_μ·T·C·σ    a = 4 all-reduces of the activations per layer and micro-batch
                                               (`tp_allreduce_bytes_per_layer`), 6 with recomputation
        pp: b·m · B_μ·T·C·σ                    b = the stage boundaries s sends across: activations to s+1 unless
                                               last, gradients to s−1 unless first (2 in the middle, 0 if N_p = 1)
        dp: 2(N_d−1)/N_d · σ·Ψ_local           the gradient all-reduce over the N_d replicas of the rank's shard;
                                               ×1.5 at ZeRO-3 (two all-gathers and a reduce-scatter)

    The gradients are reduced once per step, the micro-batches accumulated locally (`DataParallel.no_sync`), as
    ZeRO-1 does too. ZeRO-2 and 3 keep no full gradient and reduce-scatter after every micro-batch
    (`lab.parallel.zero`), ZeRO-3 also gathers the parameters for every one: up to m times ``dp``, not counted.
    Returns {"tp", "pp", "dp"}.
    """
    check_number("psi_local", psi_local, low=0)
    for name, value in (("tp", tp), ("pp", pp), ("dp", dp), ("layers", layers), ("micro_batch", micro_batch),
                        ("m", m), ("seq_len", seq_len), ("d_model", d_model), ("bytes_per_element", bytes_per_element)):
        check_int(name, value)
    check_int("stage", stage, 0, pp - 1)
    check_choice("checkpointing", checkpointing, (False, True))
    check_choice("zero_stage", zero_stage, STAGES)
    boundaries = (stage < pp - 1) + (stage > 0)
    return {"tp": 2 * (tp - 1) / tp * tp_allreduce_bytes_per_layer(micro_batch, seq_len, d_model, bytes_per_element)
            * (1.5 if checkpointing else 1) * layers * m,
            "pp": boundaries * m * micro_batch * seq_len * d_model * bytes_per_element,
            "dp": 2 * (dp - 1) / dp * bytes_per_element * psi_local * (1.5 if zero_stage == 3 else 1)}


def parallel_plan(model: ModelSpec, gpu: GPUSpec, tp: int, pp: int, dp: int, zero_stage: int,
                  micro_batch: int, seq_len: int, global_batch: int, checkpointing: bool = True,
                  hfu: float = 0.4) -> dict:
    """Per-GPU memory and step time of a 3D-parallel mixed-precision Adam run (estimates).

    N_t = ``tp``, N_p = ``pp``, N_d = ``dp``, B_μ = ``micro_batch``, T = ``seq_len``, C = ``d_model``.
    Memory: model states `zero_memory` of Ψ/(N_t·N_p) over N_d ranks; activations per layer
    and micro-batch 34·T·B_μ·C/N_t bytes (Korthikanti et al. 2022, bf16, sequence parallel, flash
    attention), stage 0 under 1F1B holding N_p micro-batches of L/N_p layers, i.e. L layers; with
    full checkpointing only each layer's input 2·T·B_μ·C/N_t plus one layer recomputed.
    Time of one step (``tokens_per_step`` = global batch · T):
      compute_s = F_hw·tokens / (GPUs · peak · ``hfu``) · (m+N_p−1)/m, with F_hw = 8Ψ per token with
        recomputation (6Ψ without) and ``hfu`` the hardware FLOPs utilisation while a GPU computes
        (recomputed FLOPs count), stretched by the bubble;
      the bytes a GPU of stage N_p/2 (a busiest one) sends per step by group, `mesh_traffic` in bf16 (σ = 2),
        Ψ_local = Ψ/(N_t·N_p): "tp_bytes", "pp_bytes", "dp_bytes";
      tp_comm_s: the tensor-parallel all-reduces, 2(N_t−1)/N_t · B_μ·T·C·2 bytes each over NVLink, 4 per
        layer and micro-batch (6 with recomputation: the recomputed forward repeats its 2). They sit on
        the critical path, so all of it is added;
      pp_comm_s: the stage's sends, B_μ·T·C·2 bytes per micro-batch and boundary, over InfiniBand when a
        pipeline spans nodes (N_t·N_p > GPUs per node), else NVLink;
      dp_comm_s: data-parallel traffic 2(N_d−1)/N_d · 2Ψ/(N_t·N_p) bytes (bf16 gradients; ×1.5 at ZeRO-3)
        over InfiniBand when the run spans nodes, else NVLink. Gradients are final only in the last
        micro-batch's backward, so only that can hide it: dp_exposed_s = max(0, dp_comm_s − b/m · compute_s),
        b = 6/8 (3/4 of a step's FLOPs are backward with recomputation; 4/6 without);
      step_s = compute_s + tp_comm_s + dp_exposed_s. Pipeline sends are left out: they are asynchronous and
        overlap the next micro-batch's compute (only the fill and drain wait for them).
    Utilisation of the whole step (PaLM's definitions): "mfu" = 6Ψ·tokens / (GPUs · peak · step_s), model
    FLOPs only (recomputation not counted, attention's FLOPs neglected); "hfu" = F_hw·tokens / (the same);
    "mfu_without_tp_comm" the MFU were tp_comm_s hidden. days_per_trillion_tokens from step_s.
    """
    for name, value in (("tp", tp), ("pp", pp), ("dp", dp), ("micro_batch", micro_batch),
                        ("seq_len", seq_len), ("global_batch", global_batch)):
        check_int(name, value)
    check_number("hfu", hfu, low=0, high=1, closed=(False, True))
    check_choice("zero_stage", zero_stage, STAGES)
    _check_specs(model, gpu)
    if not isinstance(checkpointing, bool):
        raise TypeError(f"checkpointing must be True or False, got {checkpointing!r}")
    if model.n_layer % pp:
        raise ValueError(f"pp={pp} does not divide n_layer={model.n_layer}")
    if tp > gpu.gpus_per_node:
        raise ValueError(f"tp={tp} exceeds the {gpu.gpus_per_node} GPUs of a node")
    if global_batch % (micro_batch * dp):
        raise ValueError(f"global_batch={global_batch} must be a multiple of micro_batch·dp={micro_batch * dp}")
    n_gpus = tp * pp * dp
    m = global_batch // (micro_batch * dp)
    psi_local = round(model.n_params / (tp * pp))
    states = zero_memory(psi_local, dp, zero_stage)
    tbc = seq_len * micro_batch * model.d_model                 # T·B_μ·C
    layer_act = 34 * tbc / tp
    act = (model.n_layer * 2 * tbc / tp + layer_act) if checkpointing else model.n_layer * layer_act
    tokens = global_batch * seq_len
    hw_flops = (8 if checkpointing else 6) * model.n_params * tokens
    compute_s = hw_flops / (n_gpus * gpu.bf16_flops * hfu) * (m + pp - 1) / m
    traffic = mesh_traffic(psi_local, tp, pp, dp, pp // 2, model.n_layer // pp, micro_batch, m, seq_len,
                           model.d_model, 2, checkpointing, zero_stage)        # stage N_p/2: a busiest one
    dp_bw = gpu.inter_node_bw if tp * pp * dp > gpu.gpus_per_node and dp > 1 else gpu.intra_node_bw
    pp_bw = gpu.inter_node_bw if tp * pp > gpu.gpus_per_node and pp > 1 else gpu.intra_node_bw
    tp_comm_s, pp_comm_s, dp_comm_s = traffic["tp"] / gpu.intra_node_bw, traffic["pp"] / pp_bw, traffic["dp"] / dp_bw
    dp_exposed_s = max(0.0, dp_comm_s - (6 if checkpointing else 4) / (8 if checkpointing else 6) / m * compute_s)
    step_s = compute_s + tp_comm_s + dp_exposed_s
    peak_s = n_gpus * gpu.bf16_flops                            # FLOP/s of the whole run at peak
    total = states["total"] + act
    return {"model": model.name, "gpus": n_gpus, "tp": tp, "pp": pp, "dp": dp, "zero": zero_stage,
            "micro_batches": m, "params_per_gpu": psi_local,
            "states_GB": states["total"] / 1e9, "activations_GB": act / 1e9, "total_GB": total / 1e9,
            "fits": total <= 0.9 * gpu.memory_bytes, "bubble": bubble_fraction(pp, m),
            "compute_s": compute_s, "tp_comm_s": tp_comm_s, "pp_comm_s": pp_comm_s, "dp_comm_s": dp_comm_s,
            "dp_exposed_s": dp_exposed_s, "step_s": step_s, **{f"{k}_bytes": v for k, v in traffic.items()},
            "mfu": 6 * model.n_params * tokens / (peak_s * step_s), "hfu": hw_flops / (peak_s * step_s),
            "mfu_without_tp_comm": 6 * model.n_params * tokens / (peak_s * (compute_s + dp_exposed_s)),
            "tokens_per_step": tokens, "days_per_trillion_tokens": step_s * 1e12 / tokens / 86400}


def smallest_plans(model: ModelSpec, gpu: GPUSpec, tokens: float, max_days: float, seq_len: int = 4096,
                   global_batch: int = 1024, micro_batch: int = 1, tps: tuple[int, ...] = (1, 2, 4, 8),
                   zero_stages: tuple[int, ...] = STAGES, hfu: float = 0.4) -> list[dict]:
    """Every `parallel_plan` that fits the GPU and trains on ``tokens`` tokens within ``max_days``, fewest GPUs first.

    Searched: N_t in ``tps``, N_p every divisor of L, N_d every divisor of ``global_batch`` / B_μ, each ZeRO
    stage in ``zero_stages``; the rest as in `parallel_plan` (``hfu``: its hardware FLOPs utilisation while
    computing). Each plan gains "days" = its step time for ``tokens`` (bubble, tensor-parallel all-reduces and
    the data-parallel traffic not hidden behind the last backward included). Sorted by GPUs, then days, then the
    ZeRO stage (the lowest communicates least), then GB per GPU.
    """
    check_number("tokens", tokens, low=0, closed=(False, True))
    check_number("max_days", max_days, low=0, closed=(False, True))
    check_int("global_batch", global_batch)
    check_int("micro_batch", micro_batch)
    if global_batch % micro_batch:
        raise ValueError(f"micro_batch={micro_batch} must divide global_batch={global_batch}")
    _check_specs(model, gpu)
    check_list("tps", tps, lambda name, tp: check_int(name, tp, 1, gpu.gpus_per_node))
    check_list("zero_stages", zero_stages, lambda name, zero: check_choice(name, zero, STAGES))
    plans = []
    sequences = global_batch // micro_batch
    for tp in tps:
        for pp in (d for d in range(1, model.n_layer + 1) if model.n_layer % d == 0):
            for dp in (d for d in range(1, sequences + 1) if sequences % d == 0):
                for zero in zero_stages:
                    plan = parallel_plan(model, gpu, tp, pp, dp, zero, micro_batch, seq_len, global_batch, hfu=hfu)
                    plan["days"] = plan["days_per_trillion_tokens"] * tokens / 1e12
                    if plan["fits"] and plan["days"] <= max_days:
                        plans.append(plan)
    return sorted(plans, key=lambda plan: (plan["gpus"], plan["days"], plan["zero"], plan["total_GB"]))
