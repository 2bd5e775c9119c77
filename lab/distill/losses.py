"""Distillation losses, written from their formulas in log space.

Symbols (as in the chapter and `book/notation.md`): z_S = student logits, z_T = teacher logits
(``z_s``, ``z_t`` below), both (..., V) over a vocabulary (or label set) of V entries;
τ = temperature (``temperature``); p^τ = softmax(·/τ), p_S^τ and p_T^τ of student and teacher;
y = hard labels with ``ignore_index`` marking padded positions; α = weight of the soft term.
Subscripts S and T mean student and teacher; T alone is a sequence length, as in (B, T, V).

* `kd_loss`:  L = α·τ²·KL(p_T^τ ‖ p_S^τ) + (1 − α)·CE(p_S, y), averaged over the N valid
  positions (the "batchmean" of `F.kl_div` on the flattened (N, V) logits). Its gradient with
  respect to z_S is α·τ·(p_S^τ − p_T^τ)/N for the soft term. kind="reverse" is the token-level
  reverse KL(p_S^τ ‖ p_T^τ) on the given positions; MiniLLM (Gu et al. 2024) minimises instead the
  sequence-level reverse KL over sequences the student samples, by policy gradient, which this is not.
* `generalized_jsd`: GKD's token-level divergence (Agarwal et al. 2024, eq. 1), with P = p_T^τ, Q = p_S^τ and the
  mixture M = β P + (1 − β) Q:  JSD_β(P ‖ Q) = β·KL(P ‖ M) + (1 − β)·KL(Q ‖ M), 0 < β < 1 (β = 0.5: the
  symmetric JSD). It tends to 0 at both ends, and JSD_β/β → KL(P ‖ Q) (forward) as β → 0,
  JSD_β/(1 − β) → KL(Q ‖ P) (reverse) as β → 1; β = 0 and β = 1 return those limits, the forward and the
  reverse KL, as TRL's ``GKDTrainer.generalized_jsd_loss`` does (so the loss jumps at the ends: one argument
  chooses among the three divergences, it does not interpolate their sizes).
* `hidden_state_loss`: DistilBERT's cosine loss 1 − cos(h_S, h_T) on the last layer's hidden states
  (its published form), or TinyBERT's MSE over a layer map (`lab.distill.students.uniform_layer_map`).
* `minilm_loss`: MiniLM's deep self-attention distillation of the last layer, L_AT + L_VR, where
  L_AT = mean KL(A_T ‖ A_S) of the attention distributions A = softmax(q kᵀ / √D) and
  L_VR = mean KL(VR_T ‖ VR_S) of the value relations VR = softmax(v vᵀ / √D), per head and query
  position (n_h heads; `relation_kl`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from lab.core.checks import check_choice, check_fraction, check_int, check_number, check_tensor

KINDS = ("forward", "reverse")
HIDDEN_KINDS = ("cosine", "mse")
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MASKS = (torch.bool, torch.uint8, torch.int32, torch.int64)   # True / nonzero = a position that counts


def _check_floats(name: str, x, min_dims: int = 1) -> torch.Tensor:
    """x is a non-empty floating-point tensor of at least ``min_dims`` dims (metadata only: no pass over x)."""
    check_tensor(name, x, dtypes=FLOATS)
    if x.dim() < min_dims or x.numel() == 0:
        raise ValueError(f"{name} must have shape (..., V) with at least {min_dims} dims and no empty dim, "
                         f"got {tuple(x.shape)}")
    return x


def _refuse_nan(loss: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
    """``loss`` unless it is NaN; then name the inputs with NaN or +inf entries (one scalar read otherwise)."""
    if torch.isnan(loss).any():
        bad = [name for name, x in inputs.items() if (x.isnan() | (x == float("inf"))).any()] or list(inputs)
        raise ValueError(f"{' / '.join(bad)}: NaN, +inf or a row of only -inf entries at a position that counts "
                         "make the result NaN; allowed: finite values (-inf only for an entry of probability 0)")
    return loss


def _log_softmax(x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    x = x.to(torch.promote_types(x.dtype, torch.float32)) / temperature
    return x - torch.logsumexp(x, dim=-1, keepdim=True)


def log_softmax(x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(x / τ) over the last dim, x/τ − logsumexp(x/τ), stable for any logit scale.

    τ = ``temperature`` > 0. Computed in the wider of float32 and x's dtype (float64 stays float64),
    and x is upcast before the division by τ, so bf16/fp16 logits lose nothing to a bf16 division.
    x (..., V) float; −∞ entries (masked) are allowed, NaN, +∞ and rows of only −∞ are not.
    """
    _check_floats("x", x)
    check_number("temperature", temperature, low=0, closed=(False, True))
    out = _log_softmax(x, temperature)
    return _refuse_nan(out, x=x)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    p = log_p.exp()
    support = p != 0   # p > 0, but NaN stays in; select before subtracting: no −∞ − (−∞) reaches the graph
    zero = torch.zeros_like(p)
    return (p * (torch.where(support, log_p, zero) - torch.where(support, log_q, zero))).sum(-1)


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) = Σ_v p_v (log p_v − log q_v) over the last dim, from log-probabilities.

    ``log_p`` and ``log_q``: float, the same shape (..., V), each row normalised (logsumexp = 0, up to
    the dtype's rounding; −∞ for p_v = 0). Entries with p_v = 0 contribute 0 (the limit of p log p),
    also where log q_v = −∞. Returns a tensor of the leading shape of the inputs.
    """
    _check_floats("log_p", log_p)
    _check_floats("log_q", log_q)
    if log_p.shape != log_q.shape:
        raise ValueError(f"log_p {tuple(log_p.shape)} and log_q {tuple(log_q.shape)} must have the same shape")
    for name, x in (("log_p", log_p), ("log_q", log_q)):
        tol = max(1e-3, 32 * torch.finfo(x.dtype).eps)
        worst = torch.logsumexp(x.float(), dim=-1).abs().nan_to_num(float("inf")).max().item()
        if not worst <= tol:
            raise ValueError(f"{name} must hold log-probabilities: |logsumexp| over the last dim at most {tol:g}, "
                             f"got {worst:.4g} (NaN counts as inf); pass log_softmax(logits), not logits")
    return _kl(log_p, log_q)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """CE(p_S, y) = −mean over positions with y ≠ ignore_index of log softmax(z_S)_y.

    logits z_S (..., V) float, labels y (...) int64/int32; NaN or +inf logits at a counted position are refused.
    """
    _check_floats("logits", logits, 2)
    valid = _valid_mask(labels, logits.shape[:-1], logits.shape[-1], ignore_index, logits.device)
    z = logits[valid]
    return _refuse_nan(-_log_softmax(z).gather(-1, labels[valid][:, None]).mean(), logits=z)


def _valid_mask(labels: torch.Tensor | None, lead_shape: torch.Size, vocab: int, ignore_index: int,
                device: torch.device) -> torch.Tensor:
    """Boolean mask (lead_shape) of the positions that count; checks labels' shape, dtype and range."""
    check_int("ignore_index", ignore_index, None)
    if labels is None:
        return torch.ones(lead_shape, dtype=torch.bool, device=device)
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"labels must be an int64/int32 tensor, got {getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape != lead_shape:
        raise ValueError(f"labels must have shape {tuple(lead_shape)} (the logits without the vocabulary dim), "
                         f"got {tuple(labels.shape)}")
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= vocab))
    if bad.any():
        raise ValueError(f"labels must lie in [0, {vocab}) or equal ignore_index={ignore_index}, "
                         f"got {labels[bad][0].item()}")
    if not valid.any():
        raise ValueError(f"labels has no valid position (all equal ignore_index={ignore_index})")
    return valid


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None,
            temperature: float = 2.0, alpha: float = 0.5, kind: str = "forward",
            ignore_index: int = -100) -> torch.Tensor:
    """Hinton's distillation loss: a scalar in the wider of float32 and the logits' dtype.

    ``student_logits`` z_S and ``teacher_logits`` z_T: (..., V) float, same shape (e.g. (B, T, V) for
    a language model, (B, V) for a classifier). ``labels`` y: int (...), ``ignore_index`` = padding.
    ``temperature`` τ > 0, ``alpha`` α in [0, 1].

        L = α·τ²·KL(p_T^τ ‖ p_S^τ) + (1 − α)·CE(p_S, y),   p^τ = softmax(·/τ), CE at τ = 1,

    each term the mean over the N positions with y ≠ ignore_index (all positions without labels).
    kind="reverse" uses the token-level KL(p_S^τ ‖ p_T^τ) instead (mode seeking). Without ``labels`` there is no
    hard-label term and L = τ²·KL (α is still checked but not used). The teacher gets no gradient.
    NaN or +∞ logits at a counted position are refused (checked on the result: no extra pass over the logits).
    """
    _check_floats("student_logits", student_logits, 2)
    _check_floats("teacher_logits", teacher_logits, 2)
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f"student_logits and teacher_logits must share the vocabulary: student V="
                         f"{student_logits.shape[-1]}, teacher V={teacher_logits.shape[-1]}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape")
    check_number("temperature", temperature, low=0, closed=(False, True))
    check_fraction("alpha", alpha)
    check_choice("kind", kind, KINDS)
    V = student_logits.shape[-1]
    valid = _valid_mask(labels, student_logits.shape[:-1], V, ignore_index, student_logits.device)
    tau = temperature
    z_s, z_t = student_logits[valid], teacher_logits[valid].detach()       # (N, V)
    log_ps, log_pt = _log_softmax(z_s, tau), _log_softmax(z_t, tau)
    kl = _kl(log_pt, log_ps) if kind == "forward" else _kl(log_ps, log_pt)
    soft = _refuse_nan(tau ** 2 * kl.mean(), student_logits=z_s, teacher_logits=z_t)
    if labels is None:
        return soft
    return alpha * soft + (1.0 - alpha) * cross_entropy(student_logits, labels, ignore_index)


def _jsd(log_ps: torch.Tensor, log_pt: torch.Tensor, beta: float) -> torch.Tensor:
    """JSD_β(P ‖ Q) per position from log Q = ``log_ps`` and log P = ``log_pt`` (..., V); the KLs at β = 0, 1."""
    if beta == 0:
        return _kl(log_pt, log_ps)
    if beta == 1:
        return _kl(log_ps, log_pt)
    log_m = torch.logaddexp(log_pt + math.log(beta), log_ps + math.log1p(-beta))     # log(β P + (1 − β) Q)
    return beta * _kl(log_pt, log_m) + (1 - beta) * _kl(log_ps, log_m)


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5,
                    mask: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
    """GKD's divergence D(p_T^τ ‖ p_S^τ) averaged over the positions ``mask`` selects: a scalar, float32 or wider.

    ``student_logits`` z_S and ``teacher_logits`` z_T: (..., V) float, the same shape; ``mask`` bool/int (...),
    True = a position that counts (None: all). ``beta`` β in [0, 1], ``temperature`` τ > 0 (both softmaxes at τ,
    no τ² factor, as TRL's ``generalized_jsd_loss``). With P = p_T^τ, Q = p_S^τ, M = β P + (1 − β) Q:

        D = KL(P ‖ Q)                           β = 0  (forward KL: `kd_loss` at α = 1 over τ²)
        D = β·KL(P ‖ M) + (1 − β)·KL(Q ‖ M)     0 < β < 1  (the generalized JSD)
        D = KL(Q ‖ P)                           β = 1  (reverse KL)

    log M = logaddexp(log β + log P, log(1 − β) + log Q): no probability is formed and then logged. The
    teacher gets no gradient. NaN or +∞ logits at a counted position are refused.
    """
    _check_floats("student_logits", student_logits, 1)
    _check_floats("teacher_logits", teacher_logits, 1)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape")
    check_fraction("beta", beta)
    check_number("temperature", temperature, low=0, closed=(False, True))
    valid = _token_mask(mask, student_logits.shape[:-1], student_logits.device)
    z_s, z_t = student_logits[valid], teacher_logits[valid].detach()       # (N, V)
    jsd = _jsd(_log_softmax(z_s, temperature), _log_softmax(z_t, temperature), float(beta))
    return _refuse_nan(jsd.mean(), student_logits=z_s, teacher_logits=z_t)


def _check_pairs(layer_map: Sequence[tuple[int, int]], n_student: int | None = None, n_teacher: int | None = None,
                 name: str = "layer_map") -> None:
    """A non-empty list of (student, teacher) index pairs, each index an int in [0, n) (n None: unbounded)."""
    if not isinstance(layer_map, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) == 2
                                                            for p in layer_map):
        raise TypeError(f"{name} must be a list of (student, teacher) index pairs, got {layer_map!r}")
    if len(layer_map) == 0:
        raise ValueError(f"{name} must name at least one (student, teacher) pair, got {layer_map!r}")
    for i, j in layer_map:
        check_int(f"{name} student index", i, 0, None if n_student is None else n_student - 1)
        check_int(f"{name} teacher index", j, 0, None if n_teacher is None else n_teacher - 1)


def _token_mask(mask: torch.Tensor | None, lead_shape: torch.Size, device: torch.device) -> torch.Tensor:
    if mask is None:
        return torch.ones(lead_shape, dtype=torch.bool, device=device)
    check_tensor("mask", mask, dtypes=MASKS)
    if mask.shape != lead_shape:
        raise ValueError(f"mask must have shape {tuple(lead_shape)}, got {tuple(mask.shape)}")
    if not mask.bool().any():
        raise ValueError("mask selects no position")
    return mask.bool()


def hidden_state_loss(student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor],
                      layer_map: Sequence[tuple[int, int]], kind: str = "cosine", mask: torch.Tensor | None = None,
                      projection: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Mean over mapped layers (i, j) of a distance between h_S[i] and h_T[j], each (B, T, C).

    kind="cosine" (DistilBERT): mean over valid tokens of 1 − h_S·h_T / (‖h_S‖ ‖h_T‖); DistilBERT
    applies it to the last layer only, ``layer_map`` = [(L_S, L_T)].
    kind="mse" (TinyBERT): mean over valid tokens of ‖W h_S − h_T‖² / C, W = ``projection``
    (a learnable map when the widths differ; identity by default), at every layer of TinyBERT's map.
    ``mask``: bool (B, T), True = a real token (padding excluded). Teacher states get no gradient.
    """
    check_choice("kind", kind, HIDDEN_KINDS)
    for name, states in (("student_hidden", student_hidden), ("teacher_hidden", teacher_hidden)):
        if not isinstance(states, (list, tuple)):
            raise TypeError(f"{name} must be a list of hidden states (B, T, C), got {type(states).__name__}")
    _check_pairs(layer_map, len(student_hidden), len(teacher_hidden))
    if projection is not None and not callable(projection):
        raise TypeError(f"projection must be a callable (e.g. an nn.Linear) or None, got {type(projection).__name__}")
    losses, used = [], {}
    for i, j in layer_map:
        used[f"student_hidden[{i}]"] = _check_floats(f"student_hidden[{i}]", student_hidden[i], 2)
        used[f"teacher_hidden[{j}]"] = _check_floats(f"teacher_hidden[{j}]", teacher_hidden[j], 2)
        h_s, h_t = student_hidden[i].float(), teacher_hidden[j].detach().float()
        if projection is not None:
            h_s = projection(h_s)
        if h_s.shape != h_t.shape:
            raise ValueError(f"student_hidden[{i}] {tuple(h_s.shape)} and teacher_hidden[{j}] {tuple(h_t.shape)} "
                             "differ in shape; pass a projection")
        valid = _token_mask(mask, h_s.shape[:-1], h_s.device)
        h_s, h_t = h_s[valid], h_t[valid]                                   # (N, C)
        if kind == "cosine":
            cos = (h_s * h_t).sum(-1) / (h_s.norm(dim=-1) * h_t.norm(dim=-1)).clamp_min(1e-12)
            losses.append((1.0 - cos).mean())
        else:
            losses.append((h_s - h_t).pow(2).mean())
    return _refuse_nan(torch.stack(losses).mean(), **used)


def relation_kl(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over heads and valid query positions of KL(R_T ‖ R_S), summed over keys: a scalar, float32.

    Inputs are *log*-probabilities log R (B, n_h, T, T), one distribution over keys per head and query
    (an attention map, or a value relation), with −∞ where a key is masked (causal or padding).
    ``mask``: bool (B, T), True = a real query token. The teacher's map gets no gradient.
    """
    return _relation_kl(student_log_probs, teacher_log_probs, mask, ("student_log_probs", "teacher_log_probs"))


def _relation_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None,
                 names: tuple[str, str]) -> torch.Tensor:
    for name, x in zip(names, (student, teacher)):
        check_tensor(name, x, dtypes=FLOATS)
    log_s, log_t = student.float(), teacher.detach().float()
    if log_s.dim() != 4 or log_s.shape != log_t.shape or log_s.shape[-1] != log_s.shape[-2] or log_s.numel() == 0:
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape (B, n_h, T, T), non-empty, got "
                         f"{tuple(log_s.shape)} and {tuple(log_t.shape)}")
    kl = _kl(log_t, log_s)                                                  # (B, n_h, T)
    valid = _token_mask(mask, (log_s.shape[0], log_s.shape[2]), log_s.device)
    return _refuse_nan(kl.transpose(1, 2)[valid].mean(), **dict(zip(names, (log_s, log_t))))  # (N, n_h) → mean


def minilm_loss(student_attention: torch.Tensor, teacher_attention: torch.Tensor,
                student_values: torch.Tensor, teacher_values: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """MiniLM's deep self-attention distillation (Wang et al. 2020) of the last layer: L_AT + L_VR.

        L_AT = 1/(n_h·N) Σ_a Σ_t KL(A_T[a, t] ‖ A_S[a, t]),    A  = softmax(q kᵀ / √D + mask),
        L_VR = 1/(n_h·N) Σ_a Σ_t KL(VR_T[a, t] ‖ VR_S[a, t]),  VR = softmax(v vᵀ / √D + mask),

    over the n_h heads a and the N valid query positions t (``mask``: bool (B, T)). Inputs: log A and
    log VR of the teacher's and the student's *last* layer, each (B, n_h, T, T) (`lab.distill.features`).
    Student and teacher need the same number of heads n_h; their widths and depths are free.
    """
    return (_relation_kl(student_attention, teacher_attention, mask, ("student_attention", "teacher_attention"))
            + _relation_kl(student_values, teacher_values, mask, ("student_values", "teacher_values")))
