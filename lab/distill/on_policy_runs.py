"""Suite ``distill-on-policy`` of `lab.bench` (chapter 4): on-policy distillation (GKD) against off-policy KD.

Every run trains the 3-layer teacher-initialised student of `lab.distill.seeds` (the notebook's "3_kd_teacher":
B × T tokens a step, the batches of `lm_batches(..., seed=seed)`, AdamW at 5e-4) for ``SETTINGS["steps"]`` steps
with `lab.distill.on_policy.GKDLoss`, one run per entry of ``SETTINGS["runs"]`` = [λ, β]: off-policy forward KL
(λ = 0, β = 0, the chapter's KD student itself) and, at λ = 1 (every step on the student's own samples, the paper's
on-policy GKD), forward KL (β = 0), the generalized JSD (β = 0.5) and reverse KL (β = 1). Each step scores B·T
positions, on-policy or not, so the runs share the student's initialisation, the teacher, the steps and the tokens
per step; an on-policy step costs about three off-policy ones (sampling, and a teacher forward the cache cannot hold).

Three experiments, each run's per-document loss sums at each seed of `SEEDS` (5: the seeds' part of an interval
has 4 degrees of freedom): "perplexity", its NLL on the evaluation sample (`lab.data.eval_sample`); "reverse_kl",
KL(p_S ‖ p_T) summed over the vocabulary at each position of ``samples`` continuations of ``n_new`` tokens the
student samples (τ = ``temperature``) after each held-out prompt, the first ``prompt_len`` tokens of each window of
that sample (`held_out_prompts`, `own_sample_scores` seeded with the run's seed), grouped by document; and
"teacher_nll", the teacher's NLL of the student's next token in expectation at the same positions. Only the
prefixes are sampled, so neither measure carries the noise of a sampled token. The references, scored once (at
the first seed) and stored at every seed: the untrained student ("step 0") and the teacher along its own samples
("teacher", its entropy there; "teacher_nll" only). The notebook re-runs the off-policy run at seed 0 and checks it.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from lab.core.checks import check_choice
from lab.core.records import add_seed
from lab.data import eval_sample, tokenize_split
from lab.distill.experiments import lm_batches
from lab.distill.loop import TeacherCache
from lab.distill.on_policy import held_out_prompts, on_policy_run, own_sample_scores
from lab.distill.students import gpt_student
from lab.models import load_pretrained_lm, load_tokenizer

SEEDS = (0, 1, 2, 3, 4)
SETTINGS = {"eval_tokens": 4096, "batch": 4, "seq": 64, "steps": 24, "depth": 3, "lr": 5e-4, "n_new": 16,
            "prompt_len": 32, "samples": 4, "temperature": 1.0,
            "runs": {"off-policy forward KL": [0.0, 0.0], "on-policy forward KL": [1.0, 0.0],
                     "on-policy JSD 0.5": [1.0, 0.5], "on-policy reverse KL": [1.0, 1.0]}}
QUICK = {**SETTINGS, "eval_tokens": 512, "seq": 16, "steps": 2, "n_new": 8, "prompt_len": 8, "samples": 2}


def reference_scores(teacher, sample, settings: dict) -> dict[str, dict[str, torch.Tensor]]:
    """The untrained student and the teacher along their own samples (`own_sample_scores` at the first seed):
    {"teacher_nll": {"step 0", "teacher": (W·k·n,) float64}, "reverse_kl": {"step 0": ...}}."""
    s = settings
    prompts, _ = held_out_prompts(sample, s["prompt_len"])
    start, own = (own_sample_scores(model, teacher, prompts, s["n_new"], s["temperature"], SEEDS[0], s["samples"])
                  for model in (gpt_student(teacher, s["depth"]), teacher))
    return {"teacher_nll": {"step 0": start["teacher_nll"], "teacher": own["teacher_nll"]},
            "reverse_kl": {"step 0": start["reverse_kl"]}}


def on_policy_losses(teacher, train_ids: torch.Tensor, sample, settings: dict, seed: int,
                     references: dict[str, dict[str, torch.Tensor]]) -> dict:
    """Every run of ``settings["runs"]`` at ``seed`` (`on_policy_run`), with ``references`` (`reference_scores`):
    {"perplexity", "teacher_nll", "reverse_kl": ({run: per-token values (N,) float64}, groups (N,) int64)}."""
    s = settings
    batches = lm_batches(train_ids, s["steps"], s["batch"], s["seq"], seed=seed)
    cache = TeacherCache(teacher)
    prompts, documents = held_out_prompts(sample, s["prompt_len"])
    groups = documents.repeat_interleave(s["samples"] * s["n_new"])      # the document of each scored position
    runs = {name: on_policy_run(cache, batches, sample, prompts, lam, beta, depth=s["depth"], steps=s["steps"],
                                n_new=s["n_new"], temperature=s["temperature"], lr=s["lr"], seed=seed,
                                samples=s["samples"])
            for name, (lam, beta) in s["runs"].items()}
    return {"perplexity": ({name: r["token_losses"] for name, r in runs.items()}, sample.documents),
            **{exp: ({name: r[exp] for name, r in runs.items()} | references[exp], groups)
               for exp in ("teacher_nll", "reverse_kl")}}


def run(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """`on_policy_losses` at each seed of `SEEDS` on the CPU, the notebook's device (it checks its run against the
    record), the references scored once; quick=True: `QUICK`'s settings. Returns {"seeds", "settings", "threads"
    (torch's CPU threads), "experiments": {name: {"sizes", "sums": {run: (S, G) nested lists}}}} (`add_seed`)."""
    check_choice("quick", quick, (False, True))
    if device.type != "cpu":
        raise ValueError(f"device={str(device)!r}: suite distill-on-policy runs on the cpu, where the notebook that "
                         "checks against its record runs")
    settings = QUICK if quick else SETTINGS
    tokenizer, teacher = load_tokenizer(), load_pretrained_lm("lab")
    sample, train_ids = eval_sample(tokenizer, settings["eval_tokens"]), tokenize_split("train", tokenizer)
    references = reference_scores(teacher, sample, settings)
    experiments: dict = {}
    for seed in tqdm(SEEDS, desc="distill-on-policy", disable=not progress):
        add_seed(experiments, on_policy_losses(teacher, train_ids, sample, settings, seed, references))
    return {"seeds": list(SEEDS), "settings": settings, "threads": torch.get_num_threads(), "experiments": experiments}
