"""Next-token training of a language model: `lab.models.loop.train` with the cross-entropy loss on random windows.

Loss per step: L = −(1/(B·T)) Σ log p(x_{t+1} | x_{≤t}) over B random windows of T+1 tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lab.core.checks import check_int, check_tensor
from lab.models.gpt import GPT
from lab.models.loop import Optim, train


def random_batch(tokens: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator):
    """B windows of T+1 consecutive tokens: inputs (B, T) and shifted targets (B, T), int64.

    ``tokens``: 1-D int64 ids, more than T+1 of them; the window starts are drawn from ``generator``.
    """
    check_int("batch_size", batch_size)
    check_int("seq_len", seq_len)
    check_tensor("tokens", tokens, 1, (torch.int64,))
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {generator!r:.80} ({type(generator).__name__})")
    if len(tokens) < seq_len + 2:
        raise ValueError(f"tokens has {len(tokens)} entries; need more than seq_len+1={seq_len + 1}")
    return _random_batch(tokens, batch_size, seq_len, generator)


def _random_batch(tokens: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator):
    """`random_batch` without its argument checks, for the loops that checked them once."""
    starts = torch.randint(0, len(tokens) - seq_len - 1, (batch_size,), generator=generator)
    windows = torch.stack([tokens[s: s + seq_len + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]


def calibration_windows(train_ids: torch.Tensor, n_tokens: int, window: int, seed: int) -> torch.Tensor:
    """``n_tokens`` / ``window`` windows of ``window`` train-split ids drawn with ``seed``: (n, window) int64
    (`lab.models.next_token.random_batch` with ``torch.Generator().manual_seed(seed)``)."""
    check_int("window", window, 1)
    check_int("n_tokens", n_tokens, window)
    if n_tokens % window:
        raise ValueError(f"n_tokens={n_tokens} must be a multiple of window={window}")
    return random_batch(train_ids, n_tokens // window, window, torch.Generator().manual_seed(seed))[0]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in fp32; logits (B, T, V), targets (B, T) int64."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def lm_batch_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """`lm_loss` of ``model`` (ids (B, T) → logits (B, T, V)) on one batch (x, y): the loop's ``loss_fn``.

    ``batch``: ids x (B, T) int64/int32 and next-token targets y (B, T) int64 (`random_batch`). Shapes and
    dtypes are checked (no read of the ids: a target outside [0, V) is torch's error).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(f"batch must be an (ids, targets) pair of tensors, got {batch!r:.80} ({type(batch).__name__})")
    x, y = batch
    check_tensor("batch ids", x, 2, (torch.int64, torch.int32))
    if tuple(check_tensor("batch targets", y, 2, (torch.int64,)).shape) != tuple(x.shape):
        raise ValueError(f"batch targets must have the ids' shape {tuple(x.shape)}, got {tuple(y.shape)}")
    logits = model(x)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"model must return the logits (B, T, V) as a tensor, got {type(logits).__name__}")
    if logits.dim() != 3 or logits.shape[:2] != y.shape:
        raise ValueError(f"model must map ids {tuple(x.shape)} to logits (B, T, V), got {tuple(logits.shape)}")
    return lm_loss(logits, y)


def _lm_batch_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """`lm_batch_loss` without its checks: the loss_fn of the loops whose batches `_random_batch` draws."""
    x, y = batch
    return lm_loss(model(x), y)


def train_lm(model: torch.nn.Module, train_tokens: torch.Tensor, *, steps: int, batch_size: int = 16,
             seq_len: int = 128, lr: float = 1e-3, warmup: int = 20, weight_decay: float = 0.1,
             grad_clip: float = 1.0, seed: int = 0, eval_every: int = 0,
             eval_fn: Callable[[torch.nn.Module], float] | None = None,
             progress: bool = True) -> dict:
    """Train ``model`` (ids (B, T) → logits (B, T, V)) in place; return the training record.

    Each step draws B windows of T+1 tokens of ``train_tokens`` (`random_batch`, generator seeded
    with ``seed``). The record is `lab.models.loop.train`'s (per-step ``loss`` and ``lr``, ``eval`` pairs
    (step, eval_fn value) at step 0 and every ``eval_every`` steps, ``seconds``) plus ``tokens_seen``.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("seq_len", seq_len)):
        check_int(name, value)
    check_int("seed", seed, None)
    optim = Optim(lr, warmup, weight_decay, grad_clip)
    if len(check_tensor("train_tokens", train_tokens, 1, (torch.int64,))) < seq_len + 2:
        raise ValueError(f"train_tokens has {len(train_tokens)} tokens; need more than seq_len+1={seq_len + 1}")
    if isinstance(model, GPT):  # its context and vocabulary: refused here, not at the first step
        check_int("seq_len", seq_len, 1, model.config.context_length)
        low, high = int(train_tokens.min()), int(train_tokens.max())
        if low < 0 or high >= model.config.vocab_size:
            raise ValueError(f"train_tokens must hold ids in [0, {model.config.vocab_size}), got [{low}, {high}]")
    if (check_int("eval_every", eval_every, 0) or eval_fn is not None) and not callable(eval_fn):
        raise TypeError(f"eval_fn must be callable (model → number) with eval_every={eval_every}, got {eval_fn!r}")
    gen = torch.Generator().manual_seed(seed)
    batches = (_random_batch(train_tokens, batch_size, seq_len, gen) for _ in range(steps))
    record = train(model, batches, _lm_batch_loss, steps, optim=optim,
                   eval_every=eval_every, eval_fn=eval_fn, progress=progress)
    record["tokens_seen"] = steps * batch_size * seq_len
    return record
