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

from lab.core.checks import check_choice, check_int, check_list, check_number, check_tensor
from lab.models.gpt import GPT, GPTConfig, check_gpt
from lab.params.counting import count_parameters
from lab.perplexity import EvalSample


def tie_weights(model: GPT) -> GPT:
    """Make the output head use the embedding matrix (one tensor, two uses); returns ``model``."""
    check_gpt("model", model)
    model.lm_head.weight = model.embed_tokens.weight
    model.config.tie_embeddings = True
    return model


def untie_weights(model: GPT) -> GPT:
    """Give the output head its own copy of the (possibly tied) embedding matrix; returns ``model``."""
    check_gpt("model", model)
    model.lm_head.weight = nn.Parameter(model.embed_tokens.weight.detach().clone())
    model.config.tie_embeddings = False
    return model


def _check_groups(n_layer: int, n_groups: int) -> None:
    if n_layer % check_int("n_groups", n_groups):
        raise ValueError(f"n_groups={n_groups!r} must be a positive int dividing n_layer={n_layer}")


def share_layers(model: GPT, n_groups: int = 1) -> GPT:
    """ALBERT sharing in place: layer l reuses block ⌊l·G / L⌋·(L/G) (the first of its group).

    ``n_groups=1`` shares one block across all L layers. The unused blocks are dropped, so the
    model's `parameters()` and `count_parameters` count G blocks; returns ``model``.
    """
    L = len(check_gpt("model", model).layers)
    _check_groups(L, n_groups)
    size = L // n_groups
    model.layers = nn.ModuleList(model.layers[(l // size) * size] for l in range(L))
    return model


def shared_gpt(cfg: GPTConfig, n_groups: int = 1) -> GPT:
    """A fresh `GPT` (initialised as usual) whose L layers use ``n_groups`` distinct blocks."""
    return share_layers(GPT(cfg), n_groups)


VARIANTS = ("untied", "tied", "albert")


def sharing_variant(cfg: GPTConfig, name: str, n_groups: int = 1) -> GPT:
    """A fresh `GPT` of ``cfg``'s shape as `compare_sharing` builds variant ``name`` (one of `VARIANTS`):
    "untied", "tied", or "albert" (tied, its layers sharing ``n_groups`` blocks)."""
    if not isinstance(cfg, GPTConfig):
        raise TypeError(f"cfg must be a lab.models.gpt.GPTConfig, got {type(cfg).__name__}")
    check_choice("name", name, VARIANTS)
    _check_groups(cfg.n_layer, n_groups)
    model = GPT(GPTConfig(**{**cfg.to_dict(), "tie_embeddings": name != "untied"}))
    return share_layers(model, n_groups) if name == "albert" else model


def _default_data(train_tokens: torch.Tensor | None, sample: EvalSample | None,
                  seq_len: int) -> tuple[torch.Tensor, EvalSample]:
    """The corpus train split, and the shared evaluation sample in windows that fit ``seq_len``."""
    from lab.data import EVAL_TOKENS, eval_sample, tokenize_split
    from lab.models.pretrained import load_tokenizer

    tokenizer = load_tokenizer()
    if train_tokens is None:
        train_tokens = tokenize_split("train", tokenizer)
    if sample is None:
        sample = eval_sample(tokenizer, EVAL_TOKENS, window=seq_len // 2, context=seq_len // 2)
    return train_tokens, sample


def compare_sharing(cfg: GPTConfig, train_tokens: torch.Tensor | None = None, sample: EvalSample | None = None,
                    *, variants: tuple[str, ...] = VARIANTS, n_groups: int = 1, steps: int = 300,
                    batch_size: int = 16, seq_len: int = 128, lr: float = 3e-3, seed: int = 0,
                    device: str | torch.device = "cpu", progress: bool = True) -> list[dict]:
    """Train each variant from the same seed for ``steps`` steps and score it on an evaluation sample.

    Variants: "untied" (separate head), "tied" (head = embedding), "albert" (tied, and the L
    layers share ``n_groups`` blocks). ``train_tokens`` (1-D int64) defaults to the corpus train split;
    ``sample`` (`lab.perplexity.EvalSample`, windows no longer than cfg.context_length) to the shared
    test sample `lab.data.eval_sample` in windows of seq_len/2 scored tokens after seq_len/2 of context
    (the length the models train at). Returns one row per variant:
    {variant, n_params (unique), ppl, first_loss, last_loss, losses} (first / last loss: mean training
    loss of the first / last 10 steps, nats per token; losses: the per-token NLL on ``sample``, float64
    (N,), for paired comparisons between variants with `lab.core.stats.compare` over ``sample.documents``).
    """
    from lab.core.runtime import seed_everything
    from lab.models.next_token import train_lm

    if not isinstance(cfg, GPTConfig):
        raise TypeError(f"cfg must be a lab.models.gpt.GPTConfig, got {type(cfg).__name__}")
    check_list("variants", variants, lambda name, v: check_choice(name, v, VARIANTS))
    _check_groups(cfg.n_layer, n_groups)
    check_int("steps", steps)
    check_int("batch_size", batch_size)
    check_int("seq_len", seq_len)
    check_number("lr", lr, 0.0, closed=(False, True))
    if train_tokens is not None:
        check_tensor("train_tokens", train_tokens, 1, (torch.int64,))
    if sample is not None and not isinstance(sample, EvalSample):
        raise TypeError(f"sample must be a lab.perplexity.EvalSample or None, got {type(sample).__name__}")
    train_tokens, sample = _default_data(train_tokens, sample, seq_len)
    sample.check_fits(cfg.context_length, "cfg.context_length")
    check_int("seq_len", seq_len, 1, cfg.context_length)
    rows = []
    for name in variants:
        seed_everything(seed)
        model = sharing_variant(cfg, name, n_groups).to(device)
        record = train_lm(model, train_tokens, steps=steps, batch_size=batch_size, seq_len=seq_len,
                          lr=lr, seed=seed, warmup=max(1, steps // 10), progress=progress)
        k = min(10, steps)
        losses = sample.token_losses(model)
        rows.append({"variant": name, "n_params": count_parameters(model)["total"],
                     "ppl": math.exp(losses.mean().item()),
                     "first_loss": sum(record["loss"][:k]) / k, "last_loss": sum(record["loss"][-k:]) / k,
                     "losses": losses})
        if not math.isfinite(rows[-1]["ppl"]):
            raise RuntimeError(f"variant {name!r} diverged: perplexity {rows[-1]['ppl']} on the sample")
    return rows
