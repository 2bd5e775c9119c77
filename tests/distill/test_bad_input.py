"""lab.distill refuses bad input with a message naming the argument (the table of `tests.bad_input`)."""

from __future__ import annotations

from functools import cache

import torch
from torch import nn

from lab.distill import (GKDLoss, KDLoss, Outputs, TeacherCache, attention_log_probs, cross_entropy, distill,
                         generalized_jsd, gpt_outputs, gpt_student, held_out_prompts, hidden_state_loss,
                         init_from_teacher, is_on_policy, kd_loss, kl_divergence, log_softmax, minilm_loss,
                         on_policy_run, own_sample_scores, relation_kl, sample_continuations, teacher_layer_indices,
                         uniform_layer_map, value_relation_log_probs)
from lab.models.gpt import rope_cos_sin
from tests.bad_input import Bad, merged
from tests.distill.bad_experiments import EXPERIMENTS, SAMPLE
from tests.tiny_models import tiny_gpt


@cache
def gpt():
    return tiny_gpt(n_layer=2)


def attn():
    return gpt().layers[0].attn


def rope(T=5):
    return rope_cos_sin(T, gpt().config.head_dim, gpt().config.rope_theta)


def nan_at(x, index=(0, 0), value=float("nan")):
    """A copy of x with ``value`` (NaN) at ``index``."""
    x = x.clone()
    x[index] = value
    return x


S, TT = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
Y = torch.zeros(2, 3, dtype=torch.long)
LOGP = torch.randn(3, 4).log_softmax(-1)
R = torch.randn(1, 2, 3, 3).masked_fill(torch.ones(3, 3, dtype=torch.bool).triu(1), float("-inf")).log_softmax(-1)
H = [torch.randn(1, 3, 4) for _ in range(3)]
X = torch.randn(2, 5, 32)
IDS = torch.randint(0, 61, (2, 6))
BATCHES = [(IDS[:, :-1], IDS[:, 1:])]


def on_policy(cache=None, sample=SAMPLE, prompts=IDS[:, :4], lam=0.5, beta=0.5, seed=0, **kw):
    """`on_policy_run` of a 1-layer student of `gpt` with one argument made bad (refused before it trains)."""
    settings = {"depth": 1, "steps": 1, "n_new": 4, **kw}
    return on_policy_run(TeacherCache(gpt()) if cache is None else cache, BATCHES, sample, prompts, lam, beta,
                         seed=seed, **settings)


def run(student=None, batches=BATCHES, steps=1, loss=None, progress=False, **kw):
    """`distill` of a 1-layer student of `gpt` with one argument made bad."""
    student = gpt_student(gpt(), 1) if student is None else student
    return distill(student, batches, steps, KDLoss(gpt()) if loss is None else loss, progress=progress, **kw)


CASES: dict[str, list[Bad]] = merged(EXPERIMENTS, {  # the notebook's experiments (tests.distill.bad_experiments)
    "KDLoss": [
        Bad(lambda: KDLoss("teacher"), TypeError, "teacher must be an nn.Module"),
        Bad(lambda: KDLoss(gpt(), temperature=0.0), ValueError, r"temperature=0\.0"),
        Bad(lambda: KDLoss(gpt(), alpha=True), TypeError, r"alpha must be a real number, got True"),
        Bad(lambda: KDLoss(gpt())(gpt(), BATCHES[0]), TypeError, r"batch must be a tuple \(index, inputs, labels\)"),
        Bad(lambda: KDLoss(gpt(), kind="sideways"), ValueError, "kind='sideways'"),
        Bad(lambda: KDLoss(gpt(), hidden_weight=-1.0), ValueError, r"hidden_weight=-1\.0"),
        Bad(lambda: KDLoss(gpt(), hidden_weight=1.0, hidden_map=[]), ValueError, r"hidden_map .*got \[\]"),
        Bad(lambda: KDLoss(gpt(), hidden_weight=1.0, hidden_map="12"), TypeError, "hidden_map must be a list"),
        Bad(lambda: KDLoss(gpt(), hidden_weight=1.0, hidden_map=[(True, 1)]), TypeError,
            "hidden_map student index must be an int, got True"),
        Bad(lambda: KDLoss(gpt(), hidden_map=[(1, 2)]), ValueError, r"hidden_map=\[\(1, 2\)\].*hidden_weight=0"),
        Bad(lambda: KDLoss(gpt(), ignore_index=-100.0), TypeError, r"ignore_index must be an int, got -100\.0"),
        Bad(lambda: KDLoss(gpt(), outputs_fn=None), TypeError, "outputs_fn must be callable"),
    ],
    "GKDLoss": [
        Bad(lambda: GKDLoss(nn.Linear(2, 2)), TypeError, "teacher must be a lab GPT"),
        Bad(lambda: GKDLoss(gpt(), beta=1.5), ValueError, r"beta=1\.5"),
        Bad(lambda: GKDLoss(gpt(), lam=-0.1), ValueError, r"lam=-0\.1"),
        Bad(lambda: GKDLoss(gpt(), n_new=0), ValueError, "n_new=0"),
        Bad(lambda: GKDLoss(gpt(), temperature=-1.0), ValueError, r"temperature=-1\.0"),
        Bad(lambda: GKDLoss(gpt(), generator=0), TypeError, "generator must be a torch.Generator"),
        Bad(lambda: GKDLoss(gpt())(gpt(), BATCHES[0]), TypeError, r"batch must be a tuple \(index, inputs, labels\)"),
        Bad(lambda: GKDLoss(gpt())(gpt(), (0, IDS.float(), IDS)), TypeError, "inputs must have a dtype"),
        Bad(lambda: GKDLoss(gpt(), n_new=4)(gpt(), (0, IDS[:, :6], IDS)), ValueError, "n_new=4 must divide"),
    ],
    "Outputs": [
        Bad(lambda: Outputs("logits"), TypeError, "logits must be a torch.Tensor"),
        Bad(lambda: Outputs(torch.zeros(2, 3, dtype=torch.long)), TypeError, "logits must have a dtype"),
        Bad(lambda: Outputs(torch.zeros(3)), ValueError, "logits must have 2 or 3 dimensions"),
        Bad(lambda: Outputs(torch.zeros(2, 3), hidden=torch.zeros(2, 2, 3)), TypeError, "hidden must be a list"),
        Bad(lambda: Outputs(torch.zeros(2, 3), attention=torch.zeros(2, 3, 3)), ValueError, "attention must have 4"),
    ],
    "TeacherCache": [
        Bad(lambda: TeacherCache("teacher"), TypeError, "teacher must be an nn.Module"),
        Bad(lambda: TeacherCache(nn.ReLU()), ValueError, "teacher ReLU has no parameters"),
        Bad(lambda: TeacherCache(gpt(), keep="yes"), TypeError, "keep must be one of .*'yes'"),
        Bad(lambda: TeacherCache(gpt(), outputs_fn=3), TypeError, "outputs_fn must be callable, got 3"),
    ],
    "attention_log_probs": [
        Bad(lambda: attention_log_probs(gpt(), X, *rope()), TypeError, "attn must be a lab GPT Attention"),
        Bad(lambda: attention_log_probs(attn(), X.long(), *rope()), TypeError, "x must have a dtype"),
        Bad(lambda: attention_log_probs(attn(), X[0], *rope()), ValueError, r"x must have 3 dimensions"),
        Bad(lambda: attention_log_probs(attn(), X[..., :16], *rope()), ValueError, r"x must have shape .*\(2, 5, 16\)"),
        Bad(lambda: attention_log_probs(attn(), X, *rope(4)), ValueError, r"cos must have shape .*\(4, 8\)"),
        Bad(lambda: attention_log_probs(attn(), X, rope()[0], "sin"), TypeError, "sin must be a torch.Tensor"),
    ],
    "cross_entropy": [
        Bad(lambda: cross_entropy(S.long(), Y), TypeError, "logits must have a dtype"),
        Bad(lambda: cross_entropy(S[0, 0], Y[0, 0]), ValueError, r"logits must have shape .*\(5,\)"),
        Bad(lambda: cross_entropy([[1.0, 2.0]], Y), TypeError, "logits must be a torch.Tensor"),
        Bad(lambda: cross_entropy(S, Y, ignore_index=1.5), TypeError, r"ignore_index must be an int, got 1\.5"),
        Bad(lambda: cross_entropy(S, Y, ignore_index=True), TypeError, "ignore_index must be an int, got True"),
        Bad(lambda: cross_entropy(S, Y.float()), TypeError, "labels must be an int64/int32"),
        Bad(lambda: cross_entropy(S, Y + 5), ValueError, r"labels must lie in \[0, 5\)"),
        Bad(lambda: cross_entropy(S, Y[:, :2]), ValueError, "labels must have shape"),
        Bad(lambda: cross_entropy(nan_at(S), Y), ValueError, "logits: NaN"),
    ],
    "distill": [
        Bad(lambda: run(student="student"), TypeError, "student must be an nn.Module"),
        Bad(lambda: run(batches="ab"), TypeError, "batches must be a list"),
        Bad(lambda: run(batches=iter(BATCHES)), TypeError, "batches must be a list.*list_iterator"),
        Bad(lambda: run(batches=[]), ValueError, "batches must hold at least one"),
        Bad(lambda: run(batches=[IDS]), TypeError, r"batches\[0\] must be an \(inputs, labels\) pair"),
        Bad(lambda: run(steps=True), TypeError, "steps must be an int, got True"),
        Bad(lambda: run(steps=0), ValueError, "steps=0"),
        Bad(lambda: run(loss="kd"), TypeError, "loss must be callable"),
        Bad(lambda: run(optim=None), TypeError, "optim must be an Optim"),
        Bad(lambda: run(eval_every=2), ValueError, "eval_every=2 needs an eval_fn"),
        Bad(lambda: run(eval_every=-1, eval_fn=len), ValueError, "eval_every=-1"),
        Bad(lambda: run(eval_every=1, eval_fn=3), TypeError, "eval_fn must be callable"),
        Bad(lambda: run(progress=3), TypeError, "progress must be a bool or a bar name"),
        Bad(lambda: run(batches=[(IDS[:, :-1], IDS[:, 1:].float())]), TypeError, r"batches\[0\] labels must have"),
        Bad(lambda: run(batches=[(IDS[:, :-1], IDS[0, 1:].tolist())]), TypeError, r"batches\[0\] labels must be"),
    ],
    "generalized_jsd": [
        Bad(lambda: generalized_jsd(S.long(), TT), TypeError, "student_logits must have a dtype"),
        Bad(lambda: generalized_jsd(S, TT[:, :2]), ValueError, "must have the same shape"),
        Bad(lambda: generalized_jsd(S, TT, beta=-0.5), ValueError, r"beta=-0\.5"),
        Bad(lambda: generalized_jsd(S, TT, beta="half"), TypeError, "beta must be a real number"),
        Bad(lambda: generalized_jsd(S, TT, temperature=0.0), ValueError, r"temperature=0\.0"),
        Bad(lambda: generalized_jsd(S, TT, mask=torch.ones(2, 3)), TypeError, "mask must have a dtype"),
        Bad(lambda: generalized_jsd(S, TT, mask=torch.zeros(2, 3, dtype=torch.bool)), ValueError, "mask selects no"),
        Bad(lambda: generalized_jsd(S, nan_at(TT)), ValueError, "teacher_logits: NaN"),
    ],
    "gpt_outputs": [
        Bad(lambda: gpt_outputs(nn.Linear(2, 2), IDS), TypeError, "model must be a lab GPT"),
        Bad(lambda: gpt_outputs(gpt(), IDS.float()), TypeError, "idx must have a dtype"),
        Bad(lambda: gpt_outputs(gpt(), IDS[0]), ValueError, "idx must have 2 dimensions"),
        Bad(lambda: gpt_outputs(gpt(), IDS, hidden="yes"), TypeError, "hidden must be one of .*'yes'"),
        Bad(lambda: gpt_outputs(gpt(), IDS, attention=1), TypeError, "attention must be one of .* 1"),
    ],
    "gpt_student": [
        Bad(lambda: gpt_student(nn.Linear(2, 2), 1), TypeError, "teacher must be a lab GPT"),
        Bad(lambda: gpt_student(gpt(), 0), ValueError, "n_layer=0"),
        Bad(lambda: gpt_student(gpt(), 3), ValueError, r"n_layer=3 is out of range; allowed: \[1, 2\]"),
        Bad(lambda: gpt_student(gpt(), 1.0), TypeError, r"n_layer must be an int, got 1\.0"),
        Bad(lambda: gpt_student(gpt(), 1, from_teacher="no"), TypeError, "from_teacher must be one of .*'no'"),
        Bad(lambda: gpt_student(gpt(), 1, seed=1.5), TypeError, r"seed must be an int, got 1\.5"),
        Bad(lambda: gpt_student(gpt(), 1, seed=True), TypeError, "seed must be an int, got True"),
    ],
    "held_out_prompts": [
        Bad(lambda: held_out_prompts("sample", 4), TypeError, "sample must be an EvalSample"),
        Bad(lambda: held_out_prompts(SAMPLE, 13), ValueError, r"length=13 is out of range; allowed: \[1, 12\]"),
        Bad(lambda: held_out_prompts(SAMPLE, 2.0), TypeError, r"length must be an int, got 2\.0"),
    ],
    "hidden_state_loss": [
        Bad(lambda: hidden_state_loss(torch.stack(H), H, [(0, 0)]), TypeError, "student_hidden must be a list"),
        Bad(lambda: hidden_state_loss(H, "ab", [(0, 0)]), TypeError, "teacher_hidden must be a list"),
        Bad(lambda: hidden_state_loss(H, H, [(True, 0)]), TypeError, "layer_map student index must be an int"),
        Bad(lambda: hidden_state_loss(H, H, [(0, 0.0)]), TypeError, "layer_map teacher index must be an int"),
        Bad(lambda: hidden_state_loss(H, H, [(3, 0)]), ValueError, "layer_map student index=3 is out of range"),
        Bad(lambda: hidden_state_loss(H, H, "00"), TypeError, "layer_map must be a list"),
        Bad(lambda: hidden_state_loss(H, H, []), ValueError, "layer_map must name at least one"),
        Bad(lambda: hidden_state_loss(H, H, [(0, 0)], kind="l1"), ValueError, "kind='l1'"),
        Bad(lambda: hidden_state_loss([h.long() for h in H], H, [(0, 0)]), TypeError, r"student_hidden\[0\] must"),
        Bad(lambda: hidden_state_loss(H, [h[..., :2] for h in H], [(0, 1)]), ValueError, r"student_hidden\[0\] .*"),
        Bad(lambda: hidden_state_loss(H, H, [(0, 0)], projection=3), TypeError, "projection must be a callable"),
        Bad(lambda: hidden_state_loss(H, H, [(0, 0)], mask=torch.full((1, 3), 0.5)), TypeError, "mask must have"),
        Bad(lambda: hidden_state_loss(H, H, [(0, 0)], mask=torch.ones(1, 4, dtype=torch.bool)), ValueError,
            r"mask must have shape \(1, 3\)"),
        Bad(lambda: hidden_state_loss([nan_at(h, (0, 0, 0)) for h in H], H, [(1, 2)]), ValueError,
            r"student_hidden\[1\]: NaN"),
    ],
    "init_from_teacher": [
        Bad(lambda: init_from_teacher("student", gpt()), TypeError, "student must be an nn.Module"),
        Bad(lambda: init_from_teacher(gpt_student(gpt(), 1), "teacher"), TypeError, "teacher must be an nn.Module"),
        Bad(lambda: init_from_teacher(tiny_gpt(n_layer=3), gpt()), ValueError, "n_student=3 must be <= n_teacher=2"),
        Bad(lambda: init_from_teacher(tiny_gpt(n_layer=1, d_model=16), gpt()), ValueError, "no teacher counterpart"),
    ],
    "is_on_policy": [
        Bad(lambda: is_on_policy(-1, 0.5), ValueError, "index=-1"),
        Bad(lambda: is_on_policy(0, 2.0), ValueError, r"lam=2\.0"),
        Bad(lambda: is_on_policy(1.0, 0.5), TypeError, r"index must be an int, got 1\.0"),
    ],
    "kd_loss": [
        Bad(lambda: kd_loss(S.long(), TT), TypeError, "student_logits must have a dtype"),
        Bad(lambda: kd_loss(S, "teacher"), TypeError, "teacher_logits must be a torch.Tensor"),
        Bad(lambda: kd_loss(S, TT[:, :2]), ValueError, "must have the same shape"),
        Bad(lambda: kd_loss(S, TT[..., :4]), ValueError, r"student_logits and teacher_logits must share the vocab"),
        Bad(lambda: kd_loss(S[:0], TT[:0]), ValueError, r"student_logits must have shape .*\(0, 3, 5\)"),
        Bad(lambda: kd_loss(S, TT, temperature=float("nan")), ValueError, "temperature=nan"),
        Bad(lambda: kd_loss(S, TT, temperature=True), TypeError, "temperature must be a real number, got True"),
        Bad(lambda: kd_loss(S, TT, alpha=1.5), ValueError, r"alpha=1\.5"),
        Bad(lambda: kd_loss(S, TT, kind="both"), ValueError, "kind='both'"),
        Bad(lambda: kd_loss(S, TT, Y, ignore_index=True), TypeError, "ignore_index must be an int, got True"),
        Bad(lambda: kd_loss(S, TT, Y.float()), TypeError, "labels must be an int64/int32"),
        Bad(lambda: kd_loss(S, TT, torch.full((2, 3), -100)), ValueError, "labels has no valid position"),
        Bad(lambda: kd_loss(S, nan_at(TT)), ValueError, "teacher_logits: NaN"),
        Bad(lambda: kd_loss(nan_at(S), TT, Y), ValueError, "student_logits: NaN"),
        Bad(lambda: kd_loss(S, nan_at(TT, value=float("inf")), kind="reverse"), ValueError,
            r"teacher_logits: NaN, \+inf"),
    ],
    "kl_divergence": [
        Bad(lambda: kl_divergence(3 * torch.randn(3, 4), LOGP), ValueError, "log_p must hold log-probabilities"),
        Bad(lambda: kl_divergence(LOGP, LOGP.exp()), ValueError, "log_q must hold log-probabilities"),
        Bad(lambda: kl_divergence(nan_at(LOGP), LOGP), ValueError, "log_p must hold .*NaN"),
        Bad(lambda: kl_divergence(LOGP, LOGP[0]), ValueError, r"log_q \(4,\) must have the same shape"),
        Bad(lambda: kl_divergence(LOGP.long(), LOGP), TypeError, "log_p must have a dtype"),
        Bad(lambda: kl_divergence(LOGP, [0.0]), TypeError, "log_q must be a torch.Tensor"),
        Bad(lambda: kl_divergence(LOGP[:, :0], LOGP[:, :0]), ValueError, "log_p must have shape"),
    ],
    "log_softmax": [
        Bad(lambda: log_softmax(S, temperature=-1.0), ValueError, r"temperature=-1\.0"),
        Bad(lambda: log_softmax(S, temperature=0), ValueError, "temperature=0"),
        Bad(lambda: log_softmax(S, temperature=True), TypeError, "temperature must be a real number, got True"),
        Bad(lambda: log_softmax(torch.tensor([1, 2])), TypeError, "x must have a dtype"),
        Bad(lambda: log_softmax([1.0, 2.0]), TypeError, "x must be a torch.Tensor"),
        Bad(lambda: log_softmax(torch.tensor(1.0)), ValueError, r"x must have shape .*\(\)"),
        Bad(lambda: log_softmax(nan_at(S)), ValueError, "x: NaN"),
        Bad(lambda: log_softmax(torch.full((2, 3), float("-inf"))), ValueError, "x: .*only -inf"),
    ],
    "minilm_loss": [
        Bad(lambda: minilm_loss(R, R, R, R[:, :1]), ValueError, "student_values and teacher_values must have"),
        Bad(lambda: minilm_loss(R.long(), R, R, R), TypeError, "student_attention must have a dtype"),
        Bad(lambda: minilm_loss(R, R, R, R, [[True] * 3]), TypeError, "mask must be a torch.Tensor"),
        Bad(lambda: minilm_loss(R, R, R, R, torch.zeros(1, 3, dtype=torch.bool)), ValueError, "mask selects no"),
        Bad(lambda: minilm_loss(R, nan_at(R, (0, 0, 1, 0)), R, R), ValueError, "teacher_attention: NaN"),
    ],
    "on_policy_run": [
        Bad(lambda: on_policy(cache=gpt()), TypeError, "cache must be a TeacherCache"),
        Bad(lambda: on_policy(cache=TeacherCache(nn.Linear(2, 2))), TypeError, "cache.teacher must be a lab GPT"),
        Bad(lambda: on_policy(sample=None), TypeError, "sample must be an EvalSample"),
        Bad(lambda: on_policy(seed=-1), ValueError, "seed=-1"),
        Bad(lambda: on_policy(prompts=IDS.float()), TypeError, "prompts must have a dtype"),
        Bad(lambda: on_policy(n_new=16), ValueError, r"n_new=16 must be non-empty and fit the context of 16"),
        Bad(lambda: on_policy(beta=2.0), ValueError, r"beta=2\.0"),
        Bad(lambda: on_policy(depth=3), ValueError, r"n_layer=3 is out of range"),
    ],
    "own_sample_scores": [
        Bad(lambda: own_sample_scores(nn.Linear(2, 2), gpt(), IDS, 2), TypeError, "student must be a lab GPT"),
        Bad(lambda: own_sample_scores(gpt(), "teacher", IDS, 2), TypeError, "teacher must be a lab GPT"),
        Bad(lambda: own_sample_scores(gpt(), tiny_gpt(vocab_size=50), IDS, 2), ValueError, "share the vocabulary"),
        Bad(lambda: own_sample_scores(gpt(), gpt(), IDS, 2, seed=1.5), TypeError, r"seed must be an int, got 1\.5"),
        Bad(lambda: own_sample_scores(gpt(), gpt(), IDS + 100, 2), ValueError, r"prompts must hold ids in \[0, 61\)"),
    ],
    "relation_kl": [
        Bad(lambda: relation_kl(R[0], R[0]), ValueError, r"student_log_probs and teacher_log_probs .*\(2, 3, 3\)"),
        Bad(lambda: relation_kl(R, R[..., :2]), ValueError, "must have the same shape"),
        Bad(lambda: relation_kl("R", R), TypeError, "student_log_probs must be a torch.Tensor"),
        Bad(lambda: relation_kl(R, R.long()), TypeError, "teacher_log_probs must have a dtype"),
        Bad(lambda: relation_kl(R, R, torch.ones(1, 4, dtype=torch.bool)), ValueError,
            r"mask must have shape \(1, 3\)"),
        Bad(lambda: relation_kl(R, R, torch.ones(1, 3)), TypeError, "mask must have a dtype"),
        Bad(lambda: relation_kl(nan_at(R, (0, 1, 2, 2)), R), ValueError, "student_log_probs: NaN"),
    ],
    "sample_continuations": [
        Bad(lambda: sample_continuations(nn.Linear(2, 2), IDS, 2), TypeError, "model must be a lab GPT"),
        Bad(lambda: sample_continuations(gpt(), IDS[0], 2), ValueError, "prompts must have 2 dimensions"),
        Bad(lambda: sample_continuations(gpt(), IDS, 0), ValueError, "n_new=0"),
        Bad(lambda: sample_continuations(gpt(), IDS, 11), ValueError, r"prompts \(2, 6\) \+ n_new=11 must .* fit"),
        Bad(lambda: sample_continuations(gpt(), IDS, 2, temperature=-1.0), ValueError, r"temperature=-1\.0"),
        Bad(lambda: sample_continuations(gpt(), IDS, 2, generator=1), TypeError, "generator must be a torch.Gen"),
        Bad(lambda: sample_continuations(gpt(), -IDS - 1, 2), ValueError, r"prompts must hold ids in \[0, 61\)"),
    ],
    "teacher_layer_indices": [
        Bad(lambda: teacher_layer_indices(4, True), TypeError, "n_student must be an int, got True"),
        Bad(lambda: teacher_layer_indices(4.0, 2), TypeError, r"n_teacher must be an int, got 4\.0"),
        Bad(lambda: teacher_layer_indices(4, 0), ValueError, "n_student=0"),
        Bad(lambda: teacher_layer_indices(-1, 1), ValueError, "n_teacher=-1"),
        Bad(lambda: teacher_layer_indices(2, 3), ValueError, "n_student=3 must be <= n_teacher=2"),
    ],
    "uniform_layer_map": [
        Bad(lambda: uniform_layer_map(2.0, 4), TypeError, r"n_student must be an int, got 2\.0"),
        Bad(lambda: uniform_layer_map(2, False), TypeError, "n_teacher must be an int, got False"),
        Bad(lambda: uniform_layer_map(5, 4), ValueError, "n_student=5 must be <= n_teacher=4"),
        Bad(lambda: uniform_layer_map(-2, 4), ValueError, "n_student=-2"),
    ],
    "value_relation_log_probs": [
        Bad(lambda: value_relation_log_probs(gpt().layers[0], X), TypeError, "attn must be a lab GPT Attention"),
        Bad(lambda: value_relation_log_probs(attn(), X[0]), ValueError, "x must have 3 dimensions"),
        Bad(lambda: value_relation_log_probs(attn(), X.long()), TypeError, "x must have a dtype"),
        Bad(lambda: value_relation_log_probs(attn(), X[:, :0]), ValueError, r"x must have shape .*\(2, 0, 32\)"),
    ],
})

NO_INPUT: dict[str, str] = {}
