"""A memory model for training and inference (`lab.params.measured_memory` holds the measurements that check it).

Training, per parameter (Ψ parameters; ZeRO accounting, Rajbhandari et al. 2020):

    precision     weights  gradients  master  Adam m+v  SGD-momentum  Adam total
    fp32             4        4         0       8           4            16
    bf16/fp16-mixed  2        2         4       8           4            16 = 2+2+K, K = 12
    bf16 (pure)      2        2         0       4           2             8

``torch.autocast`` stores the same 16 bytes differently (fp32 weights 4 + fp32 grads 4 +
fp32 m, v 8) and, during forward/backward, a 2-byte cast of every matmul weight, which the
activation estimate below counts.

Activations (bytes of the tensors autograd saves for backward, deduplicated by storage) for
the lab `GPT`, batch B, sequence T, C = d_model, F = d_ff, H heads, D = C/H, V vocab,
a = bytes of the compute dtype (4 for fp32, 2 under bf16/fp16 autocast):

    per layer:  2 RMSNorms × (input x, normalized x̂: 2·4·BTC, 1/rms: 4·BT)
              + inputs of q/k/v and gate/up as saved by the matmuls: a·BTC·(n_qkv + n_gu),
                n_qkv = n_gu = 1 in fp32 (one shared tensor), n_qkv = 3, n_gu = 2 under autocast
                (each linear saves its own cast of the fp32 norm output)
              + attention (fused SDPA): q, k, v (k, v already repeated to H heads), output: 4·a·BTC,
                log-sum-exp 4·BHT; W_o's input is a view of the SDPA output (no extra bytes)
              + SwiGLU: gate pre-activation g, silu(g), up u, silu(g)⊙u: 4·a·BTF
    model:      token ids and targets 2·8·BT, RoPE cos and sin 2·4·TD,
                final RMSNorm 2·4·BTC + 4·BT, LM-head input a·BTC,
                log-softmax output 4·BTV (cross-entropy runs in fp32), 4 (loss weight)
              + under autocast: the 2-byte casts of all matmul weights, 2·Ψ_matmul

Memory-efficient optimizers keep state whose size depends on the parameter *shapes*, not only
on Ψ, so ``training_memory(..., shapes=...)`` takes them (the state is fp32 or 8-bit codes in
every precision):

    adafactor  (`lab.params.adafactor`)  an (n, m) matrix: R and C, (n + m)·4 B; a vector: v, 4·n B
    adam8bit   (`lab.params.adam8bit`)   m and v as uint8 codes, 2 B per element, + one fp32 absmax
                                         per block of 2,048 per state: 2·4·⌈numel/2048⌉ B per tensor;
                                         a tensor under 4,096 elements: fp32 m and v, 8·numel B

Activation checkpointing (`lab.params.checkpointing`, ``checkpoint_every`` = k): layers 0, k, 2k, …
(L_c = ⌈L/k⌉ of them) run their forward under no_grad and keep only their input x, fp32 in all three
precisions (autocast keeps the residual stream in fp32), so each saves 4·BTC instead of "per layer",
and under autocast the casts of its matmul weights (Ψ_matmul,layer = (Ψ_matmul − VC)/L) are not saved:

    activations = (L − L_c)·per_layer + L_c·4·BTC + model − [autocast] 2·L_c·Ψ_matmul,layer

In backward each checkpointed layer is recomputed with its own graph, freed before the next one:
one layer's full saved set (per_layer + its casts) is alive on top of the gradients at a time.

Inference: weights Ψ·b and the KV cache 2·L·H_kv·D·T·B·b bytes (b = bytes per element).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from lab.core.checks import check_choice, check_int
from lab.models.gpt import GPTConfig
from lab.params.adafactor import adafactor_state_bytes
from lab.params.adam8bit import adam8bit_state_bytes
from lab.params.counting import dtype_bytes, gpt_param_count

OPTIMIZERS = ("adam", "adamw", "sgd", "sgd-momentum", "adafactor", "adam8bit")
SHAPED_OPTIMIZERS = ("adafactor", "adam8bit")  # their state bytes need the parameter shapes
PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed", "bf16")

# bytes per parameter: (weights, gradients, master weights, one optimizer state)
_PER_PARAM = {"fp32": (4, 4, 0, 4), "bf16-mixed": (2, 2, 4, 4), "fp16-mixed": (2, 2, 4, 4),
              "bf16": (2, 2, 0, 2)}
_N_STATES = {"adam": 2, "adamw": 2, "sgd": 0, "sgd-momentum": 1}
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
           "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def _check_config(config) -> None:
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a lab.models.gpt.GPTConfig, got {type(config).__name__}")


def as_dtype(dtype) -> torch.dtype:
    """``dtype`` as a torch.dtype: a torch.dtype as given, or one of the names of `_DTYPES` ("bf16", "float32", …)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if not isinstance(dtype, str):
        raise TypeError(f"dtype must be a torch.dtype or one of {tuple(_DTYPES)}, got {dtype!r}")
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype={dtype!r} is not allowed; use a torch.dtype or one of {tuple(_DTYPES)}")


def matmul_param_count(config: GPTConfig) -> int:
    """Parameters used as matmul weights: every Linear of every layer plus the LM head (V·C)."""
    _check_config(config)
    C, F_, H, H_kv, D = config.d_model, config.d_ff, config.n_head, config.n_kv_head, config.head_dim
    per_layer = C * H * D + 2 * C * H_kv * D + H * D * C + 3 * C * F_
    return config.n_layer * per_layer + config.vocab_size * C


def _layer_bytes(config: GPTConfig, batch: int, seq_len: int, autocast: bool) -> tuple[int, int]:
    """(per_layer, the layer's weight casts 2·Ψ_matmul,layer under autocast, else 0): one decoder layer's
    saved bytes in the module docstring's terms."""
    B, T, C, F_, H = batch, seq_len, config.d_model, config.d_ff, config.n_head
    a = 2 if autocast else 4
    n_qkv, n_gu = (3, 2) if autocast else (1, 1)
    per_layer = (2 * (2 * 4 * B * T * C + 4 * B * T) + a * B * T * C * (n_qkv + n_gu)
                 + 4 * a * B * T * C + 4 * B * H * T + 4 * a * B * T * F_)
    layer_matmul = (matmul_param_count(config) - config.vocab_size * C) // config.n_layer
    return per_layer, 2 * layer_matmul if autocast else 0


def activation_bytes(config: GPTConfig, batch: int, seq_len: int, precision: str = "fp32",
                     checkpoint_every: int | None = None) -> int:
    """Bytes autograd saves in one forward of the lab GPT + cross-entropy (formula in the module docstring),
    with layers 0, k, 2k, … checkpointed when ``checkpoint_every`` = k (None: no checkpointing)."""
    _check_config(config)
    check_int("batch", batch)
    check_int("seq_len", seq_len)
    check_choice("precision", precision, ("fp32", "bf16-mixed", "fp16-mixed"))
    if checkpoint_every is not None:
        check_int("checkpoint_every", checkpoint_every)
    if seq_len > config.context_length:
        raise ValueError(f"seq_len={seq_len} is not allowed; it must be <= context_length={config.context_length}")
    B, T, C, V, L = batch, seq_len, config.d_model, config.vocab_size, config.n_layer
    autocast = precision.endswith("-mixed")
    a = 2 if autocast else 4
    per_layer, layer_casts = _layer_bytes(config, B, T, autocast)
    model = (2 * 8 * B * T + 2 * 4 * T * config.head_dim + 2 * 4 * B * T * C + 4 * B * T
             + a * B * T * C + 4 * B * T * V + 4)
    L_c = 0 if checkpoint_every is None else len(range(0, L, checkpoint_every))
    casts = 2 * matmul_param_count(config) - L_c * layer_casts if autocast else 0
    return (L - L_c) * per_layer + L_c * 4 * B * T * C + model + casts


def training_memory(n_params: int, optimizer: str = "adam", precision: str = "bf16-mixed",
                    activations_bytes: int = 0, config: GPTConfig | None = None,
                    batch: int | None = None, seq_len: int | None = None,
                    checkpoint_every: int | None = None,
                    shapes: list[tuple[int, ...]] | None = None) -> dict[str, int]:
    """Bytes of one training step by part: weights, gradients, master_weights, optimizer_states,
    activations, total (ints). Per-parameter costs are the table in the module docstring;
    "adafactor" and "adam8bit" need the parameter ``shapes`` (their numels must sum to n_params).

    Activations are ``activations_bytes``, or, when ``config``, ``batch`` and ``seq_len`` are
    given, `activation_bytes` (lab GPT estimate, layers 0, k, 2k, … checkpointed when
    ``checkpoint_every`` = k). Mixed-precision Adam: 2+2+4+4+4 = 16 B/param.
    """
    check_int("n_params", n_params, 0)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_choice("precision", precision, PRECISIONS)
    check_int("activations_bytes", activations_bytes, 0)
    given = [x is not None for x in (config, batch, seq_len)]
    if any(given) and not all(given):
        raise ValueError("config, batch and seq_len must be given together for an activation estimate, "
                         f"got config={config!r}, batch={batch!r}, seq_len={seq_len!r}")
    if all(given) and activations_bytes:
        raise ValueError(f"give activations_bytes={activations_bytes} or config/batch/seq_len, not both")
    if checkpoint_every is not None and not all(given):
        raise ValueError(f"checkpoint_every={checkpoint_every!r} needs config, batch and seq_len "
                         "(an activation estimate); it is not allowed with activations_bytes")
    w, g, m, s = _PER_PARAM[precision]
    out = {"weights": w * n_params, "gradients": g * n_params, "master_weights": m * n_params,
           "optimizer_states": optimizer_state_bytes(optimizer, n_params, s, shapes),
           "activations": (activation_bytes(config, batch, seq_len, precision, checkpoint_every) if all(given)
                           else activations_bytes)}
    out["total"] = sum(out.values())
    return out


def optimizer_state_bytes(optimizer: str, n_params: int, state_bytes: int = 4,
                          shapes: list[tuple[int, ...]] | None = None) -> int:
    """Bytes of the optimizer's state: n_states·state_bytes·Ψ for adam/adamw/sgd/sgd-momentum, or,
    from the parameter ``shapes``, `adafactor_state_bytes` / `adam8bit_state_bytes` (blocks of 2,048; fp32
    under 4,096 elements)."""
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_int("n_params", n_params, 0)
    check_int("state_bytes", state_bytes)
    if optimizer not in SHAPED_OPTIMIZERS:
        return _N_STATES[optimizer] * state_bytes * n_params
    if shapes is None:
        raise ValueError(f"optimizer={optimizer!r} needs the parameter shapes (shapes=[p.shape for p in "
                         "params]): its state size depends on them, not only on n_params")
    if isinstance(shapes, str) or not isinstance(shapes, Iterable):
        raise TypeError(f"shapes must be a list of parameter shapes such as [(4096, 4096), (4096,)], got {shapes!r}")
    shapes = list(shapes)
    for i, shape in enumerate(shapes):
        if not isinstance(shape, (tuple, list, torch.Size)):
            raise TypeError(f"shapes[{i}] must be a shape (a tuple of ints), got {shape!r}")
        shapes[i] = tuple(check_int(f"shapes[{i}][{j}]", d, 0) for j, d in enumerate(shape))
    numel = sum(math.prod(shape) for shape in shapes)
    if numel != n_params:
        raise ValueError(f"shapes hold {numel} parameters but n_params={n_params}; they must agree")
    return adafactor_state_bytes(shapes) if optimizer == "adafactor" else adam8bit_state_bytes(shapes)


def training_peak_bytes(config: GPTConfig, batch: int, seq_len: int, optimizer: str = "adamw",
                        precision: str = "bf16-mixed", checkpoint_every: int | None = None) -> int:
    """Predicted peak of a training step of the lab GPT (grads set to None before it, fused optimizer).

    Candidate peaks, with M = `training_memory` of the step (``checkpoint_every`` as there):
      start of backward: M.total − M.gradients + logits-gradient transient (dL/dlog p and dL/dlogits,
                         fp32, 2·4·BTV, plus the 2·BTV bf16 cast of dL/dlogits under autocast);
      end of backward:   M.total − M.activations (all gradients, activations freed);
      with checkpointing, the recompute of layer 0 (the last one backward reaches): M.total − M.activations
                         + one layer's full saved set (per_layer + its weight casts under autocast).
    """
    m = training_memory(gpt_param_count(config), optimizer, precision, config=config, batch=batch,
                        seq_len=seq_len, checkpoint_every=checkpoint_every)
    autocast = precision.endswith("-mixed")
    transient = (8 + (2 if autocast else 0)) * batch * seq_len * config.vocab_size
    recompute = sum(_layer_bytes(config, batch, seq_len, autocast)) if checkpoint_every is not None else 0
    return max(m["total"] - m["gradients"] + transient, m["total"] - m["activations"] + recompute)


def gpt3_layer_activation_bytes(config: GPTConfig, batch: int, seq_len: int, dropout: bool = True) -> int:
    """Korthikanti et al.'s count of the bytes one GPT-3 layer saves for backward in 16 bits (no tensor
    parallelism, explicit attention; the layer's MLP is 4C wide with GeLU, whatever ``config.d_ff``):

        with dropout:     B·T·C·(34 + 5·H·T/C)   (the masks: 1 byte per element; the dropped outputs: 2)
        without dropout:  B·T·C·(32 + 2·H·T/C)   (two B·T·C masks fewer; of the T×T terms, the softmax output)

    Only C = d_model and H = n_head are read from ``config``. Returns an int (bytes)."""
    _check_config(config)
    check_int("batch", batch)
    check_int("seq_len", seq_len)
    check_choice("dropout", dropout, (False, True))
    B, T, C, H = batch, seq_len, config.d_model, config.n_head
    return B * T * C * 34 + 5 * B * H * T * T if dropout else B * T * C * 32 + 2 * B * H * T * T


def llama_layer_activation_bytes(config: GPTConfig, batch: int, seq_len: int, fused_attention: bool = False) -> int:
    """Bytes one Llama-style decoder layer of ``config`` (RMSNorm, RoPE, SwiGLU, no bias, no dropout) saves for
    backward in pure 16-bit training (2 bytes per element), counted tensor by tensor:

        2·B·T·(8·C + 4·F) + 2·B·H·T²      (explicit attention: the H·T×T softmax output is kept)
        2·B·T·(8·C + 4·F) + 4·B·H·T       (fused attention: an fp32 log-sum-exp per head and position instead)

    8·C: the inputs of the two norms and of the q/k/v and gate/up projections, q and k (after RoPE, repeated
    to H heads), v, and W_o's input; 4·F: SwiGLU's gate output g, silu(g), up output u and their product.
    The per-token 1/rms of the norms is left out, as the GPT-3 count leaves out LayerNorm's statistics.
    Returns an int (bytes)."""
    _check_config(config)
    check_int("batch", batch)
    check_int("seq_len", seq_len)
    check_choice("fused_attention", fused_attention, (False, True))
    B, T, C, F_, H = batch, seq_len, config.d_model, config.d_ff, config.n_head
    attention = 4 * B * H * T if fused_attention else 2 * B * H * T * T
    return 2 * B * T * (8 * C + 4 * F_) + attention


def kv_cache_bytes(config: GPTConfig, batch: int, seq_len: int, dtype=torch.bfloat16) -> int:
    """2·L·H_kv·D·T·B·b: one key and one value vector per layer, kv head, position and sequence."""
    _check_config(config)
    check_int("batch", batch)
    check_int("seq_len", seq_len)
    return 2 * config.n_layer * config.n_kv_head * config.head_dim * seq_len * batch * dtype_bytes(as_dtype(dtype))


def inference_memory(config: GPTConfig, batch: int, seq_len: int, dtype=torch.bfloat16) -> dict[str, int]:
    """Bytes for generation with a KV cache of ``seq_len`` positions: weights, kv_cache, total."""
    out = {"weights": gpt_param_count(config) * dtype_bytes(as_dtype(dtype)),
           "kv_cache": kv_cache_bytes(config, batch, seq_len, dtype)}
    out["total"] = out["weights"] + out["kv_cache"]
    return out
