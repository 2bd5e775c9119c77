"""On-policy distillation: generalized knowledge distillation (GKD; Agarwal et al. 2024, "On-Policy Distillation of
Language Models: Learning from Self-Generated Mistakes", ICLR 2024, Algorithm 1).

Off-policy KD trains the student on fixed sequences; at inference it conditions on its *own* tokens, a
distribution of prefixes it never trained on (the train/inference mismatch, "exposure bias"). GKD trains on
both: at each step, with the fraction λ of the steps, the student samples continuations y ~ p_S^τ(· | x) of
prompts x (temperature τ; no gradient flows through the sampling), the teacher scores them in one forward, and
the loss is the token-level divergence on the student's own prefixes,

    L(θ) = mean over t of D( p_T(· | x, y_<t) ‖ p_S^θ(· | x, y_<t) ),     D = `generalized_jsd` with β

(β = 0 forward KL, β = 1 reverse KL, 0 < β < 1 the generalized JSD); the other 1 − λ steps apply the same D
to the fixed data. Batch i is on-policy when ⌊(i + 1)λ⌋ > ⌊iλ⌋, so the on-policy steps are spread evenly (the
paper draws them at random with probability λ). An on-policy step keeps the token budget of an off-policy one:
from a data batch x (B, T) it takes the first T − n tokens of each row as the prompt and samples T / n
continuations of n tokens per prompt, B·T scored positions either way. λ = 1 is the paper's *on-policy GKD*.

`own_sample_scores` measures what on-policy training targets: along k continuations the student samples per
held-out prompt, KL(p_S ‖ p_T) and E_{y ~ p_S}[−log p_T(y)] at each position, each an exact sum over the
vocabulary (only the prefixes are sampled), in place of the teacher's NLL of the one token sampled there.

MiniLLM (Gu et al. 2024) minimises instead the *sequence-level* reverse KL of the student's samples,
E_{y ~ p_S}[log p_S(y | x) − log p_T(y | x)], whose gradient needs the policy-gradient (score-function) term;
GKD's token-level divergence on fixed samples has an exact gradient (chapter 4, section on on-policy
distillation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lab.core.checks import check_fraction, check_int, check_number, check_tensor
from lab.distill.loop import TeacherCache, distill
from lab.distill.losses import _kl, _log_softmax, generalized_jsd
from lab.distill.students import gpt_student
from lab.models.gpt import GPT, check_gpt, rope_cos_sin
from lab.models.loop import Optim
from lab.perplexity import EvalSample


def is_on_policy(index: int, lam: float) -> bool:
    """Whether batch ``index`` (an int >= 0) is on-policy at fraction ``lam`` = λ in [0, 1]: ⌊(i+1)λ⌋ > ⌊iλ⌋."""
    check_int("index", index, 0)
    check_fraction("lam", lam)
    return math.floor((index + 1) * lam) > math.floor(index * lam)


def _check_sampling(model: GPT, prompts: torch.Tensor, n_new: int, temperature: float,
                    generator: torch.Generator | None) -> None:
    """`sample_continuations`' arguments: a lab GPT, ids (B, P) in its vocabulary with P + n within its context."""
    cfg = check_gpt("model", model).config
    check_tensor("prompts", prompts, 2, (torch.int64,))
    check_int("n_new", n_new)
    check_number("temperature", temperature, 0.0)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if prompts.numel() == 0 or prompts.shape[1] + n_new > cfg.context_length:
        raise ValueError(f"prompts {tuple(prompts.shape)} + n_new={n_new} must be non-empty and fit the context of "
                         f"{cfg.context_length} tokens")
    if prompts.min() < 0 or prompts.max() >= cfg.vocab_size:
        raise ValueError(f"prompts must hold ids in [0, {cfg.vocab_size}), got [{prompts.min()}, {prompts.max()}]")


def _extend(model: GPT, ids: torch.Tensor, cache: list, keep: int = 1) -> torch.Tensor:
    """Logits (B, keep, V) of the last ``keep`` of ``ids`` (B, T) placed after the S positions in ``cache`` (per
    layer (k, v), each (B, n_kv, S, D); empty before the prompt), which it extends in place: `lab.models.gpt.Block`'s
    computation, keys and values of earlier positions read back instead of recomputed. Position j of ``ids`` sees
    the S cached positions and positions <= j of ``ids`` (causal), so T > 1 after a cache scores several tokens."""
    S = cache[0][0].shape[2] if cache else 0
    B, T = ids.shape
    cos, sin = rope_cos_sin(T, model.config.head_dim, model.config.rope_theta, ids.device, offset=S)
    mask = torch.ones(T, S + T, dtype=torch.bool, device=ids.device).tril(S) if S and T > 1 else None
    x = model.embed_tokens(ids)
    for i, block in enumerate(model.layers):
        q, k, v = block.attn.project(block.attn_norm(x), cos, sin)
        if S:
            k, v = torch.cat([cache[i][0], k], dim=2), torch.cat([cache[i][1], v], dim=2)
            cache[i] = (k, v)
        else:
            cache.append((k, v))
        share = q.shape[1] // k.shape[1]                                   # query heads per kv head
        y = F.scaled_dot_product_attention(q, k.repeat_interleave(share, 1), v.repeat_interleave(share, 1),
                                           attn_mask=mask, is_causal=S == 0 and T > 1)
        x = x + block.attn.o_proj(y.transpose(1, 2).reshape(B, T, -1))
        x = x + block.mlp(block.mlp_norm(x))
    return model.lm_head(model.norm(x[:, -keep:]))


def _repeat(cache: list, samples: int) -> list:
    """Each row of a `_extend` cache repeated ``samples`` times in place of the row (repeat_interleave)."""
    return [(k.repeat_interleave(samples, 0), v.repeat_interleave(samples, 0)) for k, v in cache]


def _draw(z: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """One token (B, 1) int64 per row of logits z (B, V) from softmax(z / τ) (τ = 0: argmax): the first v whose
    cumulative probability exceeds u·Σp for one uniform u per row (inverse CDF; one random number per row, where
    `torch.multinomial` draws V exponentials)."""
    if temperature == 0:
        return z.argmax(-1, keepdim=True)
    cdf = torch.softmax(z.double() / temperature, -1).cumsum(-1)                       # float64: no drift over V
    u = torch.rand(len(z), 1, dtype=torch.float64, generator=generator, device=z.device)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=z.shape[-1] - 1)


def _sample(model: GPT, prompts: torch.Tensor, n_new: int, temperature: float, generator: torch.Generator | None,
            samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample_continuations`' ids (B·k, P + n) and the logits z (B·k, n, V) float32 each token was drawn from."""
    cache: list = []
    z = _extend(model, prompts, cache)[:, 0].float().repeat_interleave(samples, 0)      # the prompt runs once
    cache = _repeat(cache, samples)
    ids, logits = prompts.repeat_interleave(samples, 0), []
    for step in range(n_new):
        logits.append(z)
        new = _draw(z, temperature, generator)
        ids = torch.cat([ids, new], dim=1)
        if step < n_new - 1:
            z = _extend(model, new, cache)[:, 0].float()
    return ids, torch.stack(logits, 1)


@torch.no_grad()
def sample_continuations(model: GPT, prompts: torch.Tensor, n_new: int, temperature: float = 1.0,
                         generator: torch.Generator | None = None, samples: int = 1) -> torch.Tensor:
    """The prompts followed by ``n_new`` tokens the model samples: (B·k, P + n) int64, without gradients.

    ``prompts`` x (B, P) int64 on the model's device; ``samples`` k >= 1 continuations of each (rows b·k to
    b·k + k − 1 continue prompt b); ``temperature`` τ >= 0: each token is drawn from softmax(z / τ) of the last
    position (τ = 0: argmax, greedy), with ``generator`` (None: torch's global one). The prompt runs once, then
    one position per token with the earlier keys and values kept (a KV cache; chapter 6's `lab.infer` has the
    full one, but it imports this chapter, so the import cannot point there).
    """
    _check_sampling(model, prompts, n_new, temperature, generator)
    check_int("samples", samples)
    return _sample(model, prompts, n_new, temperature, generator, samples)[0]


def _continuation_logits(model: GPT, prompts: torch.Tensor, ids: torch.Tensor, samples: int) -> torch.Tensor:
    """The logits (B·k, n, V) of ``model`` at the n positions that predict ids[:, P:], for ``ids`` (B·k, P + n) the
    continuations of ``prompts`` (B, P) of `sample_continuations` at k = ``samples``: equal to
    ``model(ids[:, :-1], logits_to_keep=n)`` up to rounding (gradients too), the prompt run once, not k times."""
    P, cache = prompts.shape[1], []
    first = _extend(model, prompts, cache).repeat_interleave(samples, 0)                 # predicts token P
    if ids.shape[1] == P + 1:
        return first
    return torch.cat([first, _extend(model, ids[:, P:-1], _repeat(cache, samples), keep=ids.shape[1] - P - 1)], 1)


@dataclass(frozen=True)
class GKDLoss:
    """GKD's loss of one batch (index i, x, y) for `lab.distill.distill`: D = `generalized_jsd` at ``beta`` β.

    Off-policy batch (``is_on_policy(i, lam)`` False): D on every position of x (B, T), the teacher's logits from
    ``teacher`` (a `TeacherCache`, key i; a model is wrapped in one). λ = 0, β = 0 is `KDLoss` at τ = 1, α = 1.
    On-policy batch: the student samples T / ``n_new`` continuations of ``n_new`` tokens after the first
    T − n_new tokens of each row (`sample_continuations` at ``temperature`` τ with ``generator``), and D is taken
    on the n_new positions that predicted the sampled tokens, the teacher run on the same ids (not cached); both
    models run each prompt once for its continuations (keys and values repeated), not once per continuation.
    """

    teacher: TeacherCache | nn.Module
    beta: float = 0.5
    lam: float = 1.0
    n_new: int = 32
    temperature: float = 1.0
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, TeacherCache):
            object.__setattr__(self, "teacher", TeacherCache(self.teacher))
        check_gpt("teacher", self.teacher.teacher)
        check_fraction("beta", self.beta)
        check_fraction("lam", self.lam)
        check_int("n_new", self.n_new)
        check_number("temperature", self.temperature, 0.0)
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(self.generator).__name__}")

    def __call__(self, student: nn.Module, batch: tuple[int, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if not (isinstance(batch, tuple) and len(batch) == 3):
            raise TypeError(f"batch must be a tuple (index, inputs, labels), got {batch!r:.80}")
        index, x, _ = batch
        check_tensor("inputs", x, 2, (torch.int64,))
        if not is_on_policy(index, self.lam):
            z_t = self.teacher(index, x, False, False).logits.to(x.device)
            return generalized_jsd(student(x), z_t, self.beta)
        B, T = x.shape
        if self.n_new >= T or T % self.n_new:
            raise ValueError(f"n_new={self.n_new} must divide the batch's length T={T} and be smaller than it "
                             "(T / n_new continuations per prompt keep the B·T positions of a step)")
        prompts, k = x[:, :T - self.n_new], T // self.n_new
        ids = sample_continuations(student, prompts, self.n_new, self.temperature, self.generator, k)
        with torch.no_grad():
            z_t = _continuation_logits(self.teacher.teacher, prompts, ids, k).float()
        return generalized_jsd(_continuation_logits(student, prompts, ids, k), z_t, self.beta)


@torch.no_grad()
def own_sample_scores(student: GPT, teacher: GPT, prompts: torch.Tensor, n_new: int, temperature: float = 1.0,
                      seed: int = 0, samples: int = 1) -> dict[str, torch.Tensor]:
    """How far the teacher is from the student along the student's own continuations of ``prompts`` (B, P).

    The student samples ``samples`` k continuations of ``n_new`` tokens per prompt (`sample_continuations`,
    τ = ``temperature``, a generator seeded ``seed``). At each of the B·k·n positions t (row-major: prompt,
    sample, step), with p_S and p_T the two next-token distributions there (τ = 1), returns, float64 (B·k·n,):
    "reverse_kl" = KL(p_S ‖ p_T) = Σ_v p_S(v) (log p_S(v) − log p_T(v)), and "teacher_nll" =
    E_{y ~ p_S}[−log p_T(y)] = −Σ_v p_S(v) log p_T(v), the teacher's NLL of the student's next token in
    expectation (the cross-entropy, KL(p_S ‖ p_T) plus the student's entropy). Both sums run over the whole
    vocabulary: only the prefixes are sampled, not the token scored at each. The student as its own teacher
    gives reverse_kl = 0 and teacher_nll = its entropy along its own samples.
    """
    check_gpt("teacher", teacher)
    check_int("seed", seed, 0)
    check_int("samples", samples)
    if teacher.config.vocab_size != check_gpt("student", student).config.vocab_size:
        raise ValueError(f"student and teacher must share the vocabulary, got V={student.config.vocab_size} and "
                         f"V={teacher.config.vocab_size}")
    _check_sampling(student, prompts, n_new, temperature, None)
    generator = torch.Generator(device=prompts.device).manual_seed(seed)
    ids, z_s = _sample(student, prompts, n_new, temperature, generator, samples)        # z_s: (B·k, n, V)
    z_t = _continuation_logits(teacher, prompts, ids, samples)                         # (B·k, n, V)
    scores: dict[str, list] = {"teacher_nll": [], "reverse_kl": []}
    for s, t in zip(z_s.flatten(0, 1).split(256), z_t.flatten(0, 1).split(256)):   # 256 positions fit a cache
        log_ps, log_pt = _log_softmax(s), _log_softmax(t)
        scores["teacher_nll"].append(-(log_ps.exp() * log_pt).sum(-1))
        scores["reverse_kl"].append(_kl(log_ps, log_pt))
    return {name: torch.cat(values).double().cpu() for name, values in scores.items()}


def held_out_prompts(sample: EvalSample, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One prompt per window of ``sample``: its first ``length`` tokens (test-split text the student never trained
    on), (W, length) int64, and the document of each (W,) int64, the unit a comparison resamples."""
    if not isinstance(sample, EvalSample):
        raise TypeError(f"sample must be an EvalSample (lab.data.eval_sample), got {type(sample).__name__}")
    check_int("length", length, 1, min(len(x) for x in sample.inputs))
    starts = torch.cumsum(torch.tensor([0] + [len(x) - c for x, c in zip(sample.inputs, sample.n_context)]), 0)
    return torch.stack([x[:length] for x in sample.inputs]), sample.documents[starts[:-1]]


def on_policy_run(cache: TeacherCache, batches: list, sample: EvalSample, prompts: torch.Tensor, lam: float,
                  beta: float, *, depth: int, steps: int, n_new: int, temperature: float = 1.0, lr: float = 5e-4,
                  seed: int = 0, samples: int = 1) -> dict:
    """One teacher-initialised student (``depth`` layers, `gpt_student`) trained ``steps`` steps with `GKDLoss`
    (λ = ``lam``, β = ``beta``, sampling at τ = ``temperature`` from a generator seeded ``seed``) on ``batches``,
    with `lm_run`'s optimiser (AdamW at ``lr``, warm-up max(1, steps // 10)); λ = β = 0 is `lm_run`'s "kd".

    Returns {"token_losses": per-token NLL on ``sample`` (n,) float64, "teacher_nll" and "reverse_kl" along the
    student's own continuations of ``prompts`` (W, P), ``samples`` k per prompt (`own_sample_scores`, seed
    ``seed``), (W·k·n_new,) float64, and "seconds" of training}.
    """
    if not isinstance(cache, TeacherCache):
        raise TypeError(f"cache must be a TeacherCache of the teacher, got {type(cache).__name__}")
    teacher = check_gpt("cache.teacher", cache.teacher)
    if not isinstance(sample, EvalSample):
        raise TypeError(f"sample must be an EvalSample (lab.data.eval_sample), got {type(sample).__name__}")
    check_int("seed", seed, 0)
    _check_sampling(teacher, prompts, n_new, temperature, None)              # before anything trains
    check_int("samples", samples)
    generator = torch.Generator(device=next(teacher.parameters()).device).manual_seed(seed)  # the student's too
    loss = GKDLoss(cache, beta, lam, n_new, temperature, generator)
    student = gpt_student(teacher, depth, from_teacher=True, seed=seed)
    record = distill(student, batches, steps, loss, optim=Optim(lr, warmup=max(1, steps // 10)), progress=False)
    return {"token_losses": sample.token_losses(student), "seconds": record["seconds"],
            **own_sample_scores(student.eval(), teacher, prompts, n_new, temperature, seed, samples)}
