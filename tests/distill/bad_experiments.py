"""The bad-input cases of the chapter's experiments that the notebook calls (`lab.distill.experiments`,
`lab.distill.encoder_task`, `lab.distill.modes`, `lab.distill.seeds`, `lab.distill.grid`; part of
tests/distill/test_bad_input.py's table). Each is refused before anything trains, times or reads the corpus: the
encoder is a stand-in with a BERT's attributes, the sample a one-window `EvalSample`."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch
from torch import nn

from lab.distill import (TeacherCache, cell_name, cpu_speedups, fit_gaussian_student, gpt_student, lm_batches, lm_run,
                         retained, run_encoder_task, run_name, temperature_alpha_grid)
from lab.perplexity import EvalSample
from tests.bad_input import Bad, T, V
from tests.tiny_models import tiny_gpt

gpt = functools.cache(lambda: tiny_gpt(n_layer=2))          # vocabulary 61, context 16
TOKENS = torch.arange(300) % 61
WINDOW = torch.arange(12) % 61
SAMPLE = EvalSample((WINDOW,), (4,), WINDOW[4:], torch.zeros(8, dtype=torch.int64))
LONG = torch.arange(40) % 61                                # 40 tokens: more than the context of 16
LONG_SAMPLE = EvalSample((LONG,), (4,), LONG[4:], torch.zeros(36, dtype=torch.int64))
IDS = torch.randint(0, 61, (2, 8), generator=torch.Generator().manual_seed(0))
Z = torch.randn(16, dtype=torch.float64)


class _Encoder(nn.Module):
    """What `run_encoder_task` reads of a BertModel before it starts: .config and 2 layers in .encoder.layer."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(hidden_size=8, max_position_embeddings=64)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])


def _task(encoder=None, tokenizer=len, **kwargs):
    return lambda: run_encoder_task(_Encoder() if encoder is None else encoder, tokenizer, **kwargs)


def _batches():
    return lm_batches(TOKENS, 1, 2, 8)


def _run(cache=None, sample=SAMPLE, depth=1, loss="kd", init="teacher", **kwargs):
    args = dict(steps=1, eval_every=0, temperature=1.0, alpha=1.0, progress=False) | kwargs
    return lambda: lm_run(TeacherCache(gpt()) if cache is None else cache, _batches(), sample, depth, loss, init,
                          **args)


def _grid(temperatures=(1.0,), alphas=(0.5,), sample=SAMPLE, **kwargs):
    args = dict(steps=1, progress=False) | kwargs
    return lambda: temperature_alpha_grid(TeacherCache(gpt()), _batches(), sample, 1, temperatures, alphas, **args)


def _speed(teacher=None, students=None, ids=IDS, rounds=2):
    return lambda: cpu_speedups(gpt() if teacher is None else teacher,
                                {1: gpt_student(gpt(), 1)} if students is None else students, ids, rounds=rounds)


EXPERIMENTS: dict[str, list[Bad]] = {
    "run_encoder_task": [
        T(_task(encoder=nn.Linear(2, 2)), r"encoder must be a transformers BERT encoder .*got Linear"),
        T(_task(tokenizer="bert-base-uncased"), r"tokenizer must be the encoder's tokenizer .*'bert-base-uncased'"),
        V(_task(n_train=0), r"n_train=0 is out of range"),
        V(_task(max_length=2), r"max_length=2 is out of range; allowed: \[3, 64\]"),
        V(_task(max_length=128), r"max_length=128 is out of range; allowed: \[3, 64\]"),
        T(_task(epochs=1.5), r"epochs must be an int, got 1\.5"),
        V(_task(lr=0.0), r"lr=0\.0 is out of range"),
        V(_task(alpha=2.0), r"alpha=2\.0 is out of range"),
        V(_task(n_layer=3), r"n_layer=3 is out of range; allowed: \[1, 2\]"),
        T(_task(students="kd"), r"students must be a tuple of student names"),
        V(_task(students=("kd", "soft")), r"students='soft' is not allowed"),
        T(_task(data_seed=0.5), r"data_seed must be an int, got 0\.5"),
        T(_task(progress="yes"), r"progress must be one of \(False, True\)"),
    ],
    "cpu_speedups": [
        V(_speed(students={"teacher": gpt()}), r"students must not name a student 'teacher'"),
        T(_speed(students=[gpt()]), r"students must be a dict \{name: lab GPT\}, got list"),
        V(_speed(students={}), r"students must name at least one student"),
        T(_speed(teacher=nn.Linear(2, 2)), r"teacher must be a lab GPT .*got Linear"),
        T(_speed(students={1: nn.Linear(2, 2)}), r"students\[1\] must be a lab GPT"),
        T(_speed(ids=IDS.float()), r"ids must have a dtype in \(torch\.int64,\)"),
        V(_speed(ids=IDS[0]), r"ids must have 2 dimensions"),
        V(_speed(ids=IDS + 61), r"ids must hold ids in \[0, 61\)"),
        V(_speed(ids=torch.zeros(1, 17, dtype=torch.int64)), r"ids\.shape\[1\]=17 is out of range; allowed: \[1, 16\]"),
        V(_speed(rounds=1), r"rounds=1 is out of range; allowed: \[2, inf\)"),
    ],
    "lm_batches": [
        V(lambda: lm_batches(TOKENS, 0, 2, 8), r"n=0 is out of range"),
        T(lambda: lm_batches(TOKENS, 2.0, 2, 8), r"n must be an int, got 2\.0"),
        T(lambda: lm_batches(TOKENS.tolist(), 2, 2, 8), r"tokens must be a torch\.Tensor, got list"),
        T(lambda: lm_batches(TOKENS, 2, True, 8), r"batch_size must be an int, got True"),
        V(lambda: lm_batches(TOKENS, 2, 2, 400), r"tokens has 300 entries; need more than seq_len\+1=401"),
        T(lambda: lm_batches(TOKENS, 2, 2, 8, seed=None), r"seed must be an int, got None"),
    ],
    "lm_run": [
        T(_run(cache=gpt()), r"cache must be a TeacherCache of the teacher, got GPT"),
        T(_run(cache=TeacherCache(nn.Linear(2, 2))), r"cache must hold a lab GPT teacher .*got Linear"),
        T(_run(sample="sample"), r"sample must be an EvalSample"),
        V(_run(sample=LONG_SAMPLE), r"sample has windows of 40 tokens, more than the student's context_length=16"),
        V(_run(loss="kd+attention"), r"loss='kd\+attention' is not allowed"),
        V(_run(init="scratch"), r"init='scratch' is not allowed"),
        T(_run(steps="24"), r"steps must be an int, got '24'"),
        V(_run(hidden_weight=-1.0), r"hidden_weight=-1\.0 is out of range"),
        T(_run(progress=3), r"progress must be one of \(False, True\), got the int 3"),
        T(_run(lr=1e-3), r"lr must be None or a dict of learning rates by init"),
        V(_run(init="random", lr={"teacher": 1e-3}), r"lr=\{'teacher': 0\.001\} has no learning rate for init="),
        V(_run(depth=3), r"n_layer=3 is out of range; allowed: \[1, 2\]"),
    ],
    "retained": [
        V(lambda: retained(10.0, 1.0), r"student_ppl=1\.0 is out of range; allowed: a finite number in \(1\.0, inf\)"),
        V(lambda: retained(0.5, 2.0), r"teacher_ppl=0\.5 is out of range"),
        T(lambda: retained("10", 2.0), r"teacher_ppl must be a real number, got '10'"),
        V(lambda: retained(10.0, float("nan")), r"student_ppl=nan"),
    ],
    "temperature_alpha_grid": [
        T(_grid(temperatures=2.0), r"temperatures must be a list or tuple, got 2\.0"),
        V(_grid(temperatures=[]), r"temperatures=\[\] is empty; give at least one value"),
        V(_grid(temperatures=[1.0, 0.0]), r"temperatures\[1\]=0\.0 is out of range"),
        V(_grid(alphas=[1.5]), r"alphas\[0\]=1\.5 is out of range"),
        T(_grid(alphas="0.5"), r"alphas must be a list or tuple, got '0\.5'"),
        V(_grid(steps=0), r"steps=0 is out of range"),
        V(_grid(lr=-1.0), r"lr=-1\.0 is out of range"),
        V(_grid(sample=LONG_SAMPLE), r"sample has windows of 40 tokens"),
    ],
    "fit_gaussian_student": [
        V(lambda: fit_gaussian_student(Z[:1], "forward", 0.0, 1.0), r"teacher_logits must hold V >= 2 bins"),
        T(lambda: fit_gaussian_student(Z.tolist(), "forward", 0.0, 1.0), r"teacher_logits must be a torch\.Tensor"),
        V(lambda: fit_gaussian_student(Z, "both", 0.0, 1.0), r"kind='both' is not allowed"),
        V(lambda: fit_gaussian_student(Z, "forward", 0.0, 0.0), r"scale=0\.0 is out of range"),
        T(lambda: fit_gaussian_student(Z, "forward", 0.0, 1.0, steps=True), r"steps must be an int, got True"),
    ],
    "run_name": [
        T(lambda: run_name("3", "kd", "teacher"), r"depth must be an int, got '3'"),
        V(lambda: run_name(3, "kd+", "teacher"), r"loss='kd\+' is not allowed"),
        V(lambda: run_name(3, "kd", "scratch"), r"init='scratch' is not allowed"),
    ],
    "cell_name": [
        V(lambda: cell_name(0.0, 0.5), r"tau=0\.0 is out of range"),
        T(lambda: cell_name("1", 0.5), r"tau must be a real number, got '1'"),
        V(lambda: cell_name(1.0, 1.5), r"alpha=1\.5 is out of range"),
        T(lambda: cell_name(1.0, True), r"alpha must be a real number, got True"),
    ],
}
