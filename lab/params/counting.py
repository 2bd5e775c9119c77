"""Counting parameters: how many, where they live, and how many bytes they take.

A parameter tensor shared by two modules (a tied embedding / LM head) is one set of
numbers, so it is counted once: parameters are deduplicated by their storage
(``untyped_storage().data_ptr()``, offset, shape) and the aliases are reported.

Closed form for the lab `GPT` (V vocab, C = d_model, H heads, H_kv kv heads, D = C/H,
F = d_ff, L layers):

    N = V·C                                   token embedding
      + L·[ C·(H·D) + 2·C·(H_kv·D) + (H·D)·C    attention W_q, W_k, W_v, W_o
          + 3·C·F                               SwiGLU W_gate, W_up, W_down
          + 2·C ]                               two RMSNorm gains
      + C                                       final RMSNorm
      + V·C  (only when the head is not tied to the embedding)
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch
from torch import nn

from lab.core.checks import check_choice, check_divisor, check_float_dtype
from lab.models.gpt import GPTConfig

BY = ("module", "category", "dtype", "tensor")
CATEGORIES = ("embeddings", "attention", "mlp", "norm", "head", "other")

# Checked in this order: the first pattern that matches a (lower-cased) parameter name wins.
# Works for lab GPT names, transformers' Llama names and BERT names.
_CATEGORY_PATTERNS = [
    ("norm", r"norm"),  # attn_norm, input_layernorm, LayerNorm, model.norm
    ("embeddings", r"embed|wte|wpe"),  # embed_tokens, word/position/token_type_embeddings
    ("head", r"lm_head|pooler|classifier|(^|\.)head\."),
    ("attention", r"q_proj|k_proj|v_proj|o_proj|attn|attention"),
    ("mlp", r"mlp|intermediate|output\.dense|gate_proj|up_proj|down_proj|ffn"),
]


def categorize(name: str) -> str:
    """The part of a transformer a parameter name belongs to: one of `CATEGORIES`."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    lower = name.lower()
    for category, pattern in _CATEGORY_PATTERNS:
        if re.search(pattern, lower):
            return category
    return "other"


def dtype_bytes(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``, from torch.finfo / torch.iinfo bit widths (bool: 1)."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
    if dtype == torch.bool:
        return 1
    info = torch.finfo(dtype) if (dtype.is_floating_point or dtype.is_complex) else torch.iinfo(dtype)
    bits = info.bits * (2 if dtype.is_complex else 1)
    return max(1, bits // 8)


def bytes_per_dtype(dtypes=(torch.float64, torch.float32, torch.bfloat16, torch.float16,
                            torch.float8_e4m3fn, torch.int8)) -> list[dict]:
    """Rows {"dtype", "bits", "bytes"}: the storage cost of one element of each dtype."""
    return [{"dtype": str(d).removeprefix("torch."), "bits": 8 * dtype_bytes(d), "bytes": dtype_bytes(d)}
            for d in dtypes]


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _storage_key(p: torch.Tensor) -> tuple:
    if p.device.type == "meta":
        return ("meta", id(p))
    return (p.untyped_storage().data_ptr(), p.storage_offset(), tuple(p.shape))


def unique_parameters(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], dict[str, str]]:
    """([(name, parameter)] with each storage once, {alias name: name it shares storage with})."""
    _check_model(model)
    first: dict[tuple, str] = {}
    unique, shared = [], {}
    for name, p in model.named_parameters(remove_duplicate=False):
        key = _storage_key(p)
        if key in first:
            shared[name] = first[key]
        else:
            first[key] = name
            unique.append((name, p))
    return unique, shared


def count_parameters(model: nn.Module, by: str = "module") -> dict:
    """Count the unique parameters of ``model`` grouped ``by`` "module" | "category" | "dtype" | "tensor".

    Returns {"by": by, "total": N, "counts": {group: n}, "bytes": {group: bytes},
    "shared": {alias: original}}; a tied parameter counts once, under its first name.
    "module" groups by the owning module's qualified name, "tensor" by parameter name.
    """
    check_choice("by", by, BY)
    unique, shared = unique_parameters(model)
    counts: dict[str, int] = defaultdict(int)
    nbytes: dict[str, int] = defaultdict(int)
    for name, p in unique:
        key = {"module": name.rpartition(".")[0] or "(root)", "category": categorize(name),
               "dtype": str(p.dtype).removeprefix("torch."), "tensor": name}[by]
        counts[key] += p.numel()
        nbytes[key] += p.numel() * dtype_bytes(p.dtype)
    return {"by": by, "total": sum(counts.values()), "counts": dict(counts), "bytes": dict(nbytes),
            "shared": shared}


def parameter_table(model: nn.Module, by: str = "category") -> list[dict]:
    """Rows {group, params, bytes, fraction} sorted by size, for rendering as a table."""
    c = count_parameters(model, by)
    if not c["total"]:
        raise ValueError(f"model ({type(model).__name__}) has no parameters to tabulate (0 in total)")
    rows = [{by: k, "params": n, "bytes": c["bytes"][k], "fraction": n / c["total"]}
            for k, n in c["counts"].items()]
    return sorted(rows, key=lambda r: -r["params"])


def model_bytes(model: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of the unique parameters, stored as they are (dtype=None) or all cast to ``dtype``."""
    unique, _ = unique_parameters(model)
    return sum(p.numel() * dtype_bytes(dtype if dtype is not None else p.dtype) for _, p in unique)


def unique_state_dict(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with each storage once, contiguous, floating tensors cast to ``dtype``.

    Parameters *and* buffers (the packed codes, scales and zeros of quantized layers are buffers);
    a tensor sharing its storage with an earlier one (the tied LM head is the embedding) is left
    out, so what remains is what a checkpoint must store. ``dtype=None`` keeps each dtype;
    integer tensors (int4/int8 codes) are never cast.
    """
    _check_model(model)
    if dtype is not None:
        check_float_dtype("dtype", dtype)   # an integer dtype would truncate the weights
    tensors, seen = {}, set()
    for name, t in model.state_dict().items():
        key = _storage_key(t)
        if key in seen:
            continue
        seen.add(key)
        tensors[name] = (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous()
    return tensors


def state_bytes(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, int]:
    """{"memory": Σ numel·element_size, "disk": bytes of the safetensors file} of `unique_state_dict`.

    "memory" is the raw tensor bytes; "disk" is the file `lab.params.safetensors_io.save_safetensors`
    writes for the same tensors (written to a temporary folder and measured): the raw bytes plus the
    8-byte length and the JSON header (names, dtypes, shapes, offsets and one SHA-256 per tensor).
    """
    import os
    import tempfile

    from lab.params.safetensors_io import save_safetensors

    tensors = unique_state_dict(model, dtype)
    memory = sum(t.numel() * t.element_size() for t in tensors.values())
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.safetensors")
        save_safetensors(tensors, path)
        return {"memory": memory, "disk": os.path.getsize(path)}


def block_param_count(config: GPTConfig) -> int:
    """Parameters of one decoder block: C·H·D + 2·C·H_kv·D + H·D·C + 3·C·F + 2·C."""
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
    C, F, H, H_kv, D = config.d_model, config.d_ff, config.n_head, config.n_kv_head, config.head_dim
    return C * (H * D) + 2 * C * (H_kv * D) + (H * D) * C + 3 * C * F + 2 * C


def gpt_param_count(config: GPTConfig, n_groups: int | None = None) -> int:
    """The closed form of the module docstring for a `GPTConfig`.

    ``n_groups`` = G distinct blocks under ALBERT-style sharing (`lab.params.sharing`):
    the L·(block) term becomes G·(block). Default: G = L, no sharing.
    """
    block = block_param_count(config)  # also checks that config is a GPTConfig
    G = config.n_layer if n_groups is None else check_divisor("n_groups", n_groups, config.n_layer, "n_layer")
    V, C = config.vocab_size, config.d_model
    return V * C + G * block + C + (0 if config.tie_embeddings else V * C)


def plot_parameter_breakdown(model: nn.Module, by: str = "category", ax=None):
    """Horizontal bar chart of parameters per group (millions, with % labels); returns the Axes."""
    import matplotlib.pyplot as plt

    if ax is not None and not isinstance(ax, plt.Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    rows = parameter_table(model, by)[::-1]
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 0.4 * len(rows) + 1))
    bars = ax.barh([r[by] for r in rows], [r["params"] / 1e6 for r in rows], color="tab:blue")
    ax.bar_label(bars, labels=[f"{100 * r['fraction']:.1f}%" for r in rows], padding=3)
    ax.set_xlabel("parameters (millions)")
    ax.set_title(f"Where the {sum(r['params'] for r in rows) / 1e6:.2f}M parameters live")
    return ax
