"""Parameter sharing: weight tying and ALBERT-style cross-layer sharing.

Symbols: V = vocab_size, C = d_model, H / H_kv = query / key-value heads, D = C / H,
F = d_ff, L = n_layer, G = number of distinct decoder blocks (G = L unshared, G = 1 ALBERT).

The whole model holds P = V·C (embedding) + [untied]·V·C (output head) + C (final norm) + G·P_block,
with P_block the parameters of one decoder block (`lab.params.counting.gpt_param_count`).

Tying reuses the embedding matrix E (V, C) as the output head: logits = h Eᵀ. ALBERT shares
one block's weights across layers: layer l uses block ⌊l / (L/G)⌋, so the network is still
L layers deep (same FLOPs) with G blocks of weights. A shared tensor's gradient is the sum of
the gradients of all its uses. Counts here are of *unique* tensors (shared counted once).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lab.models.gpt import GPT, GPTConfig
from lab.params.counting import count_parameters


def tie_weights(model: GPT) -> GPT:
    """Make the output head use the embedding matrix (one tensor, two uses); returns ``model``."""
    model.lm_head.weight = model.embed_tokens.weight
    model.config.tie_embeddings = True
    return model


def untie_weights(model: GPT) -> GPT:
    """Give the output head its own copy of the (possibly tied) embedding matrix; returns ``model``."""
    model.lm_head.weight = nn.Parameter(model.embed_tokens.weight.detach().clone())
    model.config.tie_embeddings = False
    return model


def _check_groups(n_layer: int, n_groups: int) -> None:
    if isinstance(n_groups, bool) or not isinstance(n_groups, int) or n_groups <= 0 or n_layer % n_groups:
        raise ValueError(f"n_groups={n_groups!r} must be a positive int dividing n_layer={n_layer}")


def share_layers(model: GPT, n_groups: int = 1) -> GPT:
    """ALBERT sharing in place: layer l reuses block ⌊l·G / L⌋·(L/G) (the first of its group).

    ``n_groups=1`` shares one block across all L layers. The unused blocks are dropped, so the
    model's `parameters()` and `count_parameters` count G blocks; returns ``model``.
    """
    L = len(model.layers)
    _check_groups(L, n_groups)
    size = L // n_groups
    model.layers = nn.ModuleList(model.layers[(l // size) * size] for l in range(L))
    return model


def shared_gpt(cfg: GPTConfig, n_groups: int = 1) -> GPT:
    """A fresh `GPT` (initialised as usual) whose L layers use ``n_groups`` distinct blocks."""
    return share_layers(GPT(cfg), n_groups)


VARIANTS = ("untied", "tied", "albert")


def _variant(cfg: GPTConfig, name: str, n_groups: int) -> GPT:
    model = GPT(GPTConfig(**{**cfg.to_dict(), "tie_embeddings": name != "untied"}))
    return share_layers(model, n_groups) if name == "albert" else model


def _default_tokens(n_val: int) -> tuple[torch.Tensor, torch.Tensor]:
    from lab.data import tokenize_split
    from lab.models.pretrained import load_tokenizer

    tokenizer = load_tokenizer()
    return tokenize_split("train", tokenizer), tokenize_split("validation", tokenizer)[:n_val]


def compare_sharing(cfg: GPTConfig, train_tokens: torch.Tensor | None = None,
                    val_tokens: torch.Tensor | None = None, *, variants: tuple[str, ...] = VARIANTS,
                    n_groups: int = 1, steps: int = 300, batch_size: int = 16, seq_len: int = 128,
                    lr: float = 3e-3, n_val: int = 16_384, seed: int = 0, device: str | torch.device = "cpu",
                    progress: bool = True) -> list[dict]:
    """Train each variant from the same seed for ``steps`` steps and measure validation perplexity.

    Variants: "untied" (separate head), "tied" (head = embedding), "albert" (tied, and the L
    layers share ``n_groups`` blocks). Tokens default to the corpus train split and the first
    ``n_val`` tokens of the validation split (1-D int64). Returns one row per variant:
    {variant, n_params (unique), val_ppl, first_loss, last_loss, val_losses} (losses: mean of the
    first / last 10 training steps, nats per token; val_losses: the per-token NLL on the validation
    tokens, float64, for paired comparisons between variants with `lab.core.stats.compare`).
    """
    from lab.core.runtime import seed_everything
    from lab.models.next_token import train_lm
    from lab.perplexity import token_losses

    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"variant {v!r} is not allowed; use any of {VARIANTS}")
    _check_groups(cfg.n_layer, n_groups)
    if (train_tokens is None) != (val_tokens is None):
        raise ValueError("pass both train_tokens and val_tokens, or neither (to use the corpus)")
    if train_tokens is None:
        train_tokens, val_tokens = _default_tokens(n_val)
    rows = []
    for name in variants:
        seed_everything(seed)
        model = _variant(cfg, name, n_groups).to(device)
        record = train_lm(model, train_tokens, steps=steps, batch_size=batch_size, seq_len=seq_len,
                          lr=lr, seed=seed, warmup=max(1, steps // 10), progress=progress)
        k = min(10, steps)
        val_losses = token_losses(model, val_tokens, context_length=seq_len, stride=seq_len // 2)
        rows.append({"variant": name, "n_params": count_parameters(model)["total"],
                     "val_ppl": math.exp(val_losses.mean().item()),
                     "first_loss": sum(record["loss"][:k]) / k, "last_loss": sum(record["loss"][-k:]) / k,
                     "val_losses": val_losses})
        if not math.isfinite(rows[-1]["val_ppl"]):
            raise RuntimeError(f"variant {name!r} diverged: validation perplexity {rows[-1]['val_ppl']}")
    return rows
