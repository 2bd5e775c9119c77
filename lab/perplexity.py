"""Quality metric shared by every chapter: sliding-window perplexity.

PPL = exp( −(1/N) Σ_t log p(x_t | x_{t−L+1..t−1}) ), with windows of L = ``context_length``
tokens moved by ``stride`` tokens; each window scores only the tokens the previous window
did not, so every token after the first is scored exactly once, with at least L − stride
tokens of context (except in the first window). This needs stride < L: with stride = L the
first token of each window would have no context inside it and would go unscored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lab.core.checks import check_choice, check_int, check_tensor

__all__ = [
    "token_losses", "perplexity", "EvalSample",
]


def _logits(model, ids: torch.Tensor, logits_to_keep: int | torch.Tensor = 0) -> torch.Tensor:
    """Logits of the positions ``logits_to_keep`` names (`transformers`' convention, which lab's `GPT` follows)."""
    out = model(ids, logits_to_keep=logits_to_keep)
    return out.logits if hasattr(out, "logits") else out


def _check_model(model, progress) -> None:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a lab GPT or a transformers causal LM), got "
                        f"{type(model).__name__}")
    check_choice("progress", progress, (True, False))


def _windows(n: int, context_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_scored) for each window over n tokens."""
    windows, prev_end, begin = [], 0, 0
    while True:
        end = min(begin + context_length, n)
        windows.append((begin, end, end - max(prev_end, begin + 1)))
        prev_end = end
        if end == n:
            return windows
        begin += stride


@torch.no_grad()
def token_losses(model, tokens: torch.Tensor, context_length: int = 256, stride: int = 128,
                  batch_size: int = 8, progress: bool = False) -> torch.Tensor:
    """Negative log-likelihood (nats, float64) of tokens[1:], shape (N−1,), by sliding windows."""
    _check_model(model, progress)
    check_tensor("tokens", tokens)
    for name, value in (("context_length", context_length), ("stride", stride), ("batch_size", batch_size)):
        check_int(name, value, None)   # the type here; the ranges below
    if tokens.dim() != 1 or tokens.dtype != torch.int64:
        raise ValueError(f"tokens must be a 1-D int64 tensor, got shape {tuple(tokens.shape)}, {tokens.dtype}")
    if len(tokens) < 2:
        raise ValueError(f"tokens needs at least 2 entries, got {len(tokens)}")
    if context_length < 2 or not 0 < stride < context_length:
        raise ValueError(f"need context_length >= 2 and 0 < stride < context_length, "
                         f"got context_length={context_length}, stride={stride}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll = torch.full((len(tokens) - 1,), float("nan"), dtype=torch.float64)  # NaN = unscored
    windows = _windows(len(tokens), context_length, stride)
    groups: dict[int, list] = {}  # equal-length windows batch together
    for w in windows:
        groups.setdefault(w[1] - w[0], []).append(w)
    batches = [ws[i:i + batch_size] for ws in groups.values() for i in range(0, len(ws), batch_size)]
    for batch in tqdm(batches, desc="perplexity", disable=not progress):
        ids = torch.stack([tokens[b:e] for b, e, _ in batch]).to(device)
        keep = max(n_scored for _, _, n_scored in batch)  # the head runs on the last keep + 1 positions only
        logp = F.log_softmax(_logits(model, ids, keep + 1).float(), dim=-1)
        token_logp = logp[:, :-1].gather(-1, ids[:, -keep:, None]).squeeze(-1).double().cpu()
        for row, (b, e, n_scored) in zip(token_logp, batch):
            nll[e - 1 - n_scored: e - 1] = -row[-n_scored:]  # targets at positions b+1..e-1
    model.train(was_training)
    return nll


def perplexity(model, tokens: torch.Tensor, context_length: int = 256, stride: int = 128,
               batch_size: int = 8, progress: bool = False) -> float:
    """exp(mean NLL) of ``tokens`` under ``model`` (lab `GPT` or a `transformers` causal LM)."""
    nll = token_losses(model, tokens, context_length, stride, batch_size, progress)
    return math.exp(nll.mean().item())


@dataclass(frozen=True)
class EvalSample:
    """Scored tokens drawn from whole documents, each scored with context from its own document only.

    ``inputs[i]`` (c_i + w_i,) int64 is a window of one document: c_i tokens of context (not scored)
    followed by the w_i scored tokens, each predicted from the tokens before it in the window.
    ``tokens`` (n,) int64 are the scored tokens of every window, in order; ``documents`` (n,) int64 the
    document index of each (the unit `lab.core.stats.compare` resamples). Built by `lab.data.eval_sample`.
    """

    inputs: tuple[torch.Tensor, ...]
    n_context: tuple[int, ...]
    tokens: torch.Tensor
    documents: torch.Tensor

    def __post_init__(self) -> None:
        """Shapes and types (no scan of the ids): windows of ≥ 2 ids with 1 ≤ c_i < len, and n scored tokens."""
        for name, value in (("inputs", self.inputs), ("n_context", self.n_context)):
            if not isinstance(value, tuple) or not value:
                raise (ValueError if isinstance(value, tuple) else TypeError)(
                    f"{name} must be a non-empty tuple, got {type(value).__name__} {value!r:.60}")
        if len(self.inputs) != len(self.n_context):
            raise ValueError(f"inputs and n_context must have one entry per window, got {len(self.inputs)} and "
                             f"{len(self.n_context)}")
        for i, (x, c) in enumerate(zip(self.inputs, self.n_context)):
            check_int(f"n_context[{i}]", c, 1, len(check_tensor(f"inputs[{i}]", x, 1, (torch.int64,))) - 1)
        n = sum(len(x) - c for x, c in zip(self.inputs, self.n_context))
        for name in ("tokens", "documents"):
            if tuple(check_tensor(name, getattr(self, name), 1, (torch.int64,)).shape) != (n,):
                raise ValueError(f"{name} must have shape ({n},) (the scored tokens of the windows), got "
                                 f"{tuple(getattr(self, name).shape)}")

    def check_fits(self, context_length: int, name: str = "context_length") -> None:
        """ValueError unless every window (context and scored tokens) fits ``context_length`` positions."""
        check_int(name, context_length)
        longest = max(len(x) for x in self.inputs)
        if longest > context_length:
            raise ValueError(f"sample has windows of {longest} tokens, more than {name}={context_length}; build it "
                             "with a smaller window and context")

    @torch.no_grad()
    def token_losses(self, model, batch_size: int = 8, progress: bool = False) -> torch.Tensor:
        """Negative log-likelihood (nats, float64) of each scored token, shape (n,), aligned with ``tokens``."""
        _check_model(model, progress)
        check_int("batch_size", batch_size, 1)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        starts = torch.cumsum(torch.tensor([0] + [len(x) - c for x, c in zip(self.inputs, self.n_context)]), 0)
        nll = torch.empty(int(starts[-1]), dtype=torch.float64)
        order = sorted(range(len(self.inputs)), key=lambda i: -len(self.inputs[i]))   # similar lengths batch together
        batches = [order[j:j + batch_size] for j in range(0, len(order), batch_size)]
        for batch in tqdm(batches, desc="perplexity", disable=not progress):
            ids = torch.zeros(len(batch), len(self.inputs[batch[0]]), dtype=torch.int64)
            for row, i in enumerate(batch):        # right padding: a causal model's earlier positions ignore it
                ids[row, :len(self.inputs[i])] = self.inputs[i]
            # window positions c..end−1 are predicted from c−1..end−2: the head runs on those positions only
            first = min(self.n_context[i] for i in batch) - 1
            last = max(len(self.inputs[i]) for i in batch) - 1
            logits = _logits(model, ids.to(device), torch.arange(first, last, device=device))
            for row, i in enumerate(batch):
                c, end = self.n_context[i], len(self.inputs[i])
                logp = F.log_softmax(logits[row, c - 1 - first:end - 1 - first].float(), dim=-1)
                targets = self.inputs[i][c:, None].to(device)
                nll[starts[i]:starts[i + 1]] = -logp.gather(-1, targets).squeeze(-1).double().cpu()
        model.train(was_training)
        return nll

    def perplexity(self, model, batch_size: int = 8, progress: bool = False) -> float:
        """exp(mean NLL) over the scored tokens: the token-weighted perplexity the sample estimates."""
        return math.exp(self.token_losses(model, batch_size, progress).mean().item())
