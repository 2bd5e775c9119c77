"""Suite ``distill-seeds`` of `lab.bench` (chapter 4): the language-model students at several seeds.

A student's perplexity depends on its seed (the batch order and, from scratch, the initialisation), so a
comparison of two students speaks of their losses only when its interval resamples seeds as well as
documents. `notebooks/04_distillation` trains its seven students at one seed; this suite trains them,
as the notebook does, at each seed of `SEEDS` and keeps their per-document loss sums on the evaluation
sample (experiment ``lm``, runs named ``"{depth}_{loss}_{init}"``), which the notebook checks its own runs
against (`lab.core.records.seeded_sums`) and compares with `lab.core.stats.compare_sums`. Experiment
``encoder``: the encoder students (runs "kd", "hard") at each seed on the paragraphs of data seed 0, their
errors (1 − correct) summed per test page.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from lab.core.checks import check_choice, check_int
from lab.core.records import add_seed
from lab.data import eval_sample, tokenize_split
from lab.distill.encoder_task import run_encoder_task
from lab.distill.experiments import INITS, LOSSES, encoder_unavailable, lm_batches, lm_run
from lab.distill.loop import TeacherCache
from lab.models import load_pretrained_encoder, load_pretrained_lm, load_tokenizer

SEEDS = (0, 1, 2)
# The notebook's defaults (its parameters cell); the notebook checks them against the record's.
SETTINGS = {"eval_tokens": 4096, "batch": 4, "seq": 64, "steps": 24, "temperature": 1.0, "alpha": 1.0,
            "hidden_weight": 1.0,
            "lm_runs": [[3, "hard", "teacher"], [3, "kd", "teacher"], [3, "kd+hidden", "teacher"],
                        [3, "hard", "random"], [3, "kd", "random"], [2, "hard", "teacher"], [2, "kd", "teacher"]],
            "encoder": {"n_train": 32, "n_test": 20, "max_length": 32, "epochs": 3, "lr": 3e-4, "temperature": 2.0,
                        "alpha": 1.0}}
QUICK = {**SETTINGS, "eval_tokens": 512, "seq": 32, "steps": 2,
         "encoder": {**SETTINGS["encoder"], "n_train": 4, "n_test": 3, "max_length": 16, "epochs": 1}}
DATA_SEED = 0                                    # the encoder's paragraphs, the same at every seed


def run_name(depth: int, loss: str, init: str) -> str:
    """The record's name of a run: "3_kd_teacher" for depth 3, loss "kd", teacher init.

    ``depth`` >= 1 (an int), ``loss`` in `lab.distill.experiments.LOSSES`, ``init`` in its ``INITS``.
    """
    check_int("depth", depth)
    check_choice("loss", loss, LOSSES)
    check_choice("init", init, INITS)
    return f"{depth}_{loss}_{init}"


def student_losses(teacher, train_ids: torch.Tensor, sample, settings: dict,
                   seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every student of ``settings["lm_runs"]`` trained at ``seed`` (its batches `lm_batches(..., seed=seed)`,
    `lm_run(..., seed=seed)`): ({run name: per-token NLL on ``sample`` (N,) float64}, sample.documents)."""
    s = settings
    batches = lm_batches(train_ids, s["steps"], s["batch"], s["seq"], seed=seed)
    cache = TeacherCache(teacher)
    losses = {run_name(depth, loss, init): lm_run(
        cache, batches, sample, depth, loss, init, steps=s["steps"], eval_every=0, temperature=s["temperature"],
        alpha=s["alpha"], hidden_weight=s["hidden_weight"], seed=seed, progress=False)["token_losses"]
        for depth, loss, init in s["lm_runs"]}
    return losses, sample.documents


def encoder_errors(encoder, tokenizer, settings: dict, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The encoder students trained at ``seed`` on the paragraphs of `DATA_SEED` (`run_encoder_task`):
    ({"kd", "hard": errors 1 − correct per test paragraph (N,) float64}, the page of each (N,))."""
    enc = run_encoder_task(encoder, tokenizer, students=("kd", "hard"), seed=seed, data_seed=DATA_SEED,
                           progress=False, **settings["encoder"])
    errors = {name: 1 - torch.tensor(enc[f"student_{name}_correct"], dtype=torch.float64) for name in ("kd", "hard")}
    return errors, torch.tensor(enc["test_documents"])


def record_by_seed(suite: str, device: torch.device, settings: dict, progress: bool, per_seed) -> dict:
    """Suite ``suite``'s record: ``per_seed(teacher, train_ids, sample, seed)`` → {experiment: ({run: per-item
    losses (N,)}, groups (N,))} at each seed of `SEEDS`, the teacher the book's model, the sample of
    ``settings["eval_tokens"]`` evaluation tokens; on the CPU (the notebook's device: it checks its own runs
    against the record). Returns {"seeds", "settings", "threads" (torch's CPU threads), "experiments": {name:
    {"sizes", "sums": {run: (S, G) nested lists}}}}."""
    if device.type != "cpu":
        raise ValueError(f"device={str(device)!r}: suite {suite} runs on the cpu, where the notebook that "
                         "checks against its record runs")
    tokenizer = load_tokenizer()
    teacher = load_pretrained_lm("lab")
    sample = eval_sample(tokenizer, settings["eval_tokens"])
    train_ids = tokenize_split("train", tokenizer)
    experiments: dict = {}
    for seed in tqdm(SEEDS, desc=suite, disable=not progress):
        add_seed(experiments, per_seed(teacher, train_ids, sample, seed))
    return {"seeds": list(SEEDS), "settings": settings, "threads": torch.get_num_threads(), "experiments": experiments}


def run(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """`student_losses` (experiment "lm") and `encoder_errors` ("encoder") at each seed of `SEEDS`
    (`record_by_seed`). quick=True: `QUICK`'s tiny settings. Without the encoder's wheel the record has no
    ``encoder`` experiment."""
    settings = QUICK if quick else SETTINGS
    encoder = None if device.type != "cpu" or encoder_unavailable() else load_pretrained_encoder()

    def per_seed(teacher, train_ids, sample, seed: int) -> dict:
        results = {"lm": student_losses(teacher, train_ids, sample, settings, seed)}
        if encoder is not None:
            results["encoder"] = encoder_errors(*encoder, settings, seed)
        return results
    return record_by_seed("distill-seeds", device, settings, progress, per_seed)
