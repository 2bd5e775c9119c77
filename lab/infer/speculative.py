"""Speculative decoding: a cheap draft model proposes k tokens, the target checks them in one forward.

Each step (Leviathan et al. 2023; Chen et al. 2023), with committed tokens x₁…x_n:

1. the draft samples d₁ … d_k autoregressively, d_i ~ q_i = q(· | x, d_<i);
2. the target runs once on (x_n, d₁, …, d_k) and gives p_1 … p_{k+1}, p_i = p(· | x, d_<i);
3. for i = 1 … k: accept d_i with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection
   draw the replacement from the residual r_i = max(0, p_i − q_i) / Σ max(0, p_i − q_i) and stop;
   if all k are accepted, draw one more token from p_{k+1}.

Every step emits between 1 and k + 1 tokens, and each emitted token has exactly the target's
distribution: P(emit x) = q(x)·min(1, p(x)/q(x)) + (1 − Σ_y min(p(y), q(y)))·r(x)
= min(p, q)(x) + max(0, p − q)(x) = p(x). This holds for any draft distribution q, provided q is the
one the draft token was sampled from: the output follows p, the target's distribution after the
temperature and top-k/top-p filters that define it. Filtering or tempering the draft as well changes
only how often its tokens are accepted, not what is emitted. With acceptance rate α = E[Σ_x min(p(x), q(x))]
(one minus the total-variation distance between p and q), assumed the same at every position,

    E[tokens per step] = (1 − α^{k+1}) / (1 − α),

and with c = (cost of a draft step) / (cost of a target step) the expected speed-up over plain
decoding is (1 − α^{k+1}) / ((1 − α)(c·k + 1)), if the target's pass over k + 1 tokens costs what its
one-token step costs (memory-bound decoding; `expected_speedup` takes the measured ratio r otherwise).
Greedy decoding (τ = 0) is the special case of one-hot p and q: a draft token is kept iff it is the target's
argmax, so the output equals the target's greedy output exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lab.core.checks import check_fraction, check_int, check_number, check_tensor
from lab.infer.generate import Decoder, check_flags, check_prompt, check_seed
from lab.infer.kv_cache import INDEX_DTYPES
from lab.infer.sampling import check_distribution, check_generator, check_sampling, next_token_probs, sample_from
from lab.models.gpt import GPT, check_gpt


def check_draft_length(k: int) -> None:
    """``k``, the draft tokens per step, is an int >= 1."""
    check_int("k", k)


def expected_tokens_per_step(alpha: float, k: int) -> float:
    """(1 − α^{k+1}) / (1 − α): tokens one speculative step emits on average (k + 1 at α = 1)."""
    check_draft_length(k)
    check_fraction("alpha", alpha)
    return float(k + 1) if alpha == 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


def expected_speedup(alpha: float, k: int, cost_ratio: float, verify_ratio: float = 1.0) -> float:
    """(1 − α^{k+1}) / ((1 − α)(c·k + r)): c = draft step cost / target step cost, r = cost of the target's
    pass over k + 1 tokens / its one-token step (r = 1 while decoding is memory bound, as on a GPU; more
    where a step is compute or overhead bound)."""
    check_number("cost_ratio", cost_ratio, low=0)
    check_number("verify_ratio", verify_ratio, low=0, closed=(False, True))
    return expected_tokens_per_step(alpha, k) / (cost_ratio * k + verify_ratio)


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """r = max(0, p − q) / Σ max(0, p − q) over the last dim; p itself where p ≤ q everywhere (p = q)."""
    r = (p - q).clamp(min=0)
    total = r.sum(-1, keepdim=True)
    return torch.where(total > 0, r / total.clamp(min=torch.finfo(r.dtype).tiny), p)


def _check_step(p: torch.Tensor, q: torch.Tensor, draft_tokens: torch.Tensor) -> None:
    """`speculative_accept`'s checks: p and q distributions, the draft tokens ids whose q is positive."""
    check_distribution("p", p)
    check_distribution("q", q)
    if len(draft_tokens) and (draft_tokens.min() < 0 or draft_tokens.max() >= p.shape[-1]):
        raise ValueError(f"draft_tokens must be token ids in [0, {p.shape[-1]}), got {draft_tokens.tolist()}")
    q_d = q[torch.arange(len(draft_tokens), device=q.device), draft_tokens]
    if (q_d <= 0).any():
        raise ValueError(f"q gives draft token(s) {draft_tokens[q_d <= 0].tolist()} probability 0: a draft token "
                         "must be drawn from q (the acceptance ratio p/q would be undefined)")


def speculative_accept(p: torch.Tensor, q: torch.Tensor, draft_tokens: torch.Tensor,
                       generator: torch.Generator | None = None, check: bool = True) -> tuple[int, int]:
    """The acceptance rule of one step: (number of accepted draft tokens a, the token emitted after them).

    p (k+1, V): target distributions at the k draft positions and one past them; q (k, V): the draft's
    distributions the draft tokens (k,) were drawn from. Accept d_i iff u_i < p_i(d_i) / q_i(d_i),
    u_i ~ U[0, 1); on rejection the next token is drawn from `residual_distribution`(p_i, q_i),
    else from p_{k+1}. ``check=False`` skips the checks of p, q and the draft tokens (`speculative_generate`
    builds them itself; each check reads values back from the device).
    """
    check_tensor("p", p, 2)
    check_tensor("q", q, 2)
    check_tensor("draft_tokens", draft_tokens, 1, INDEX_DTYPES)         # shapes and dtypes: no read-back
    check_generator(generator)
    k = len(draft_tokens)
    if p.shape[0] != k + 1 or q.shape[0] != k or p.shape[1:] != q.shape[1:]:
        raise ValueError(f"need p (k+1, V) and q (k, V) for k={k} draft tokens, got {tuple(p.shape)}, {tuple(q.shape)}")
    if check:
        _check_step(p, q, draft_tokens)
    idx = torch.arange(k, device=p.device)
    ratio = p[idx, draft_tokens] / q[idx, draft_tokens]
    u = torch.rand(k, generator=generator, device=p.device)
    rejected = (u >= ratio).nonzero()
    if len(rejected) == 0:
        return k, int(sample_from(p[k:], generator))
    a = int(rejected[0])
    return a, int(sample_from(residual_distribution(p[a], q[a])[None], generator))


@dataclass
class SpeculativeResult:
    tokens: torch.Tensor        # prompt + generated, (T₀ + n,) int64
    accepted: list[int]         # draft tokens accepted in each step
    drafted: list[int]          # draft tokens proposed in each step (k, fewer near the end)

    def __post_init__(self) -> None:
        """One count of each per step, 0 <= accepted <= drafted (a notebook pools several runs into one)."""
        check_tensor("tokens", self.tokens, 1)
        for name in ("accepted", "drafted"):
            if not isinstance(value := getattr(self, name), (list, tuple)):
                raise TypeError(f"{name} must be a list of ints, one per step, got {type(value).__name__}")
        if len(self.accepted) != len(self.drafted):
            raise ValueError(f"accepted and drafted must have one entry per step, got {len(self.accepted)} and "
                             f"{len(self.drafted)}")
        for i, (a, k) in enumerate(zip(self.accepted, self.drafted)):
            check_int(f"drafted[{i}]", k, 0)
            check_int(f"accepted[{i}]", a, 0, k)

    @property
    def steps(self) -> int:
        return len(self.accepted)

    @property
    def acceptance_rate(self) -> float:
        """α̂ = accepted / tested draft tokens. A step tests its draft tokens in order and stops at the
        first rejection, so it tests a + 1 of them (all k if a = k); tokens after a rejection were
        never tested, and counting them (accepted / proposed) would bias α̂ low."""
        tested = sum(min(a + 1, k) for a, k in zip(self.accepted, self.drafted))
        return sum(self.accepted) / max(1, tested)

    @property
    def tokens_per_step(self) -> float:
        return (sum(self.accepted) + self.steps) / max(1, self.steps)


@torch.no_grad()
def speculative_generate(target: GPT, draft: GPT, prompt_ids: torch.Tensor, max_new_tokens: int, k: int = 4,
                         temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                         seed: int = 0, cuda_graph: bool = False) -> SpeculativeResult:
    """Generate ``max_new_tokens`` tokens for one prompt (T₀,) or (1, T₀) with draft length ``k``.

    The emitted tokens are distributed exactly as `lab.infer.generate` with the same temperature,
    top-k and top-p, because those define p. The draft samples from q with the same settings, which keeps
    α high (exactness only needs the q it sampled from). Both models keep a static KV cache; after a
    rejection the caches are rewound to the committed tokens.
    """
    check_gpt("target", target)
    check_gpt("draft", draft)
    ids = check_prompt(target, prompt_ids, max_new_tokens)
    check_sampling(temperature, top_k, top_p)
    check_draft_length(k)
    check_seed(seed)
    check_flags(cuda_graph=cuda_graph)
    if ids.shape[0] != 1:
        raise ValueError(f"prompt_ids must be one sequence (T,) or (1, T), got a batch of {ids.shape[0]}")
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"draft and target must share the vocabulary, got draft vocab_size="
                         f"{draft.config.vocab_size} and target vocab_size={target.config.vocab_size}")
    check_prompt(draft, prompt_ids, max_new_tokens)
    T0 = ids.shape[1]
    generator = torch.Generator(device=ids.device).manual_seed(seed)
    max_len = T0 + max_new_tokens
    tgt = Decoder(target, 1, max_len, cuda_graph=cuda_graph)
    drf = Decoder(draft, 1, max_len, cuda_graph=cuda_graph)
    tokens = ids[0].tolist()
    if T0 > 1:                  # invariant: the target's cache holds all committed tokens but the last
        tgt.extend(ids[:, :-1])
    accepted, drafted = [], []

    def probs(logits: torch.Tensor) -> torch.Tensor:          # the arguments are checked above, once
        return next_token_probs(logits, temperature, top_k, top_p, check=False)

    while len(tokens) < max_len:
        k_step = min(k, max_len - len(tokens) - 1)   # emit at most the tokens still wanted
        drf.rewind(min(drf.length, len(tokens) - 1))
        q, proposal = [], []
        if k_step > 0:
            feed = torch.tensor([tokens[drf.length:]], device=ids.device)   # the committed tokens it lacks
            for _ in range(k_step):
                q.append(probs(drf.extend(feed)[0, -1]))
                proposal.append(int(sample_from(q[-1][None], generator)))
                feed = torch.tensor([[proposal[-1]]], device=ids.device)
        p = probs(tgt.extend(torch.tensor([[tokens[-1]] + proposal], device=ids.device))[0])
        if k_step > 0:
            a, nxt = speculative_accept(p, torch.stack(q), torch.tensor(proposal, device=ids.device), generator,
                                        check=False)             # drawn from q here: no read-back per step
        else:
            a, nxt = 0, int(sample_from(p[:1], generator))
        tokens += proposal[:a] + [nxt]
        tgt.rewind(len(tokens) - 1)
        accepted.append(a)
        drafted.append(k_step)
    return SpeculativeResult(torch.tensor(tokens, device=ids.device), accepted, drafted)
