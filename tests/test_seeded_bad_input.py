"""Bad input to lab.seeded's public names: each refused with a message that names the argument."""

from __future__ import annotations

import torch

from lab.perplexity import EvalSample
from lab.seeded import run_seeded, score_methods
from tests.bad_input import Bad
from tests.tiny_models import tiny_gpt

IDS = torch.randint(0, 61, (12,), generator=torch.Generator().manual_seed(0))
SAMPLE = EvalSample((IDS,), (4,), IDS[4:].clone(), torch.zeros(8, dtype=torch.int64))
ONE = {"e": {"r": (True, lambda model, seed: None)}}

CASES: dict[str, list[Bad]] = {
    "score_methods": [
        Bad(lambda: score_methods("gpt", ONE, SAMPLE, [0]), TypeError, r"model must be a torch\.nn\.Module, got str"),
        Bad(lambda: score_methods(tiny_gpt(), {"e": [1]}, SAMPLE, [0]), TypeError,
            r"methods must be \{experiment: \{run: \(seeded, method\)\}\}"),
        Bad(lambda: score_methods(tiny_gpt(), ONE, SAMPLE, [-1]), ValueError, r"seeds\[0\]=-1 is out of range"),
        Bad(lambda: score_methods(tiny_gpt(), ONE, SAMPLE, ["0"]), TypeError, r"seeds\[0\] must be an int"),
    ],
    "run_seeded": [
        Bad(lambda: run_seeded("prune-seeds", torch.device("cuda"), {}, (0,), False, lambda lm, c, ids: ONE),
            ValueError, r"device='cuda': suite prune-seeds runs on the cpu"),
    ],
}
NO_INPUT: dict[str, str] = {"Methods": "a type alias, not called"}
