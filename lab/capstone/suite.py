"""Chapter 7's benchmark suite (``python -m lab.bench leaderboard``): every route on the book's model."""

from __future__ import annotations

from dataclasses import asdict

import torch

from lab.capstone.leaderboard import leaderboard
from lab.capstone.routes import QUICK, ROUTES, Settings
from lab.core.checks import check_choice, check_device
from lab.data import eval_sample, tokenize_split
from lab.models import load_pretrained_lm, load_tokenizer


def run(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """The suite: the book's model, the evaluation sample (``settings.eval_tokens`` scored tokens; None: the whole
    test split), the train split, every route (`leaderboard`)."""
    for name, flag in (("quick", quick), ("progress", progress)):
        check_choice(name, flag, (True, False))
    device = check_device("device", device)        # before the model and the corpus load
    settings = QUICK if quick else Settings()
    tokenizer = load_tokenizer()
    rows = leaderboard(load_pretrained_lm("lab"), eval_sample(tokenizer, settings.eval_tokens),
                       tokenize_split("train", tokenizer), settings, device, progress=progress)
    if quick:
        for row in rows:
            row["command"] += " --quick"
    return {"settings": asdict(settings), "reference": ROUTES[0].name, "rows": rows}
