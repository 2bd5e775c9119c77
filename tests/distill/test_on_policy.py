"""lab.distill.on_policy: the cached sampler against a re-run of the whole prefix (greedy, and k samples of a prompt
run once), the inverse-CDF draw against the tempered distribution, GKD's loss against its parts (no gradient
through the samples; λ = β = 0 is the KD loss), the λ schedule, the own-sample scores against a direct
computation, the loop lowering the divergence on a tiny model, seeded determinism, and the suite's record.
Bad input: tests/distill/test_bad_input.py."""

from __future__ import annotations

import functools

import torch

from lab.core.records import add_seed
from lab.distill import (GKDLoss, KDLoss, TeacherCache, distill, generalized_jsd, gpt_student, held_out_prompts,
                         is_on_policy, on_policy_run, own_sample_scores, sample_continuations)
from lab.distill.losses import kl_divergence
from lab.distill.on_policy_runs import QUICK, on_policy_losses, reference_scores
from lab.models.loop import Optim
from lab.perplexity import EvalSample
from tests.tiny_models import tiny_gpt


@functools.cache
def teacher():
    """A tiny GPT (vocabulary 61) with peaked next-token distributions: its final norm's gain times 8."""
    model = tiny_gpt(seed=1, n_layer=2, context_length=24)
    with torch.no_grad():
        model.norm.weight.mul_(8.0)
    return model


X = torch.randint(0, 61, (3, 8), generator=torch.Generator().manual_seed(0))       # a data batch (B, T)
BATCHES = [(x[:, :-1], x[:, 1:]) for x in torch.randint(0, 61, (6, 3, 9), generator=torch.Generator().manual_seed(1))]


def test_the_schedule_puts_a_fraction_lam_of_the_batches_on_policy_evenly():
    for lam in (0.0, 0.25, 0.5, 1 / 3, 1.0):
        flags = [is_on_policy(i, lam) for i in range(12)]
        assert sum(flags) == int(12 * lam + 1e-9)
    assert [is_on_policy(i, 0.5) for i in range(4)] == [False, True, False, True]


def test_greedy_cached_sampling_equals_rerunning_the_prefix():
    ids = sample_continuations(teacher(), X, 10, temperature=0.0)
    naive = X
    with torch.no_grad():
        for _ in range(10):
            naive = torch.cat([naive, teacher()(naive)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(ids, naive) and torch.equal(ids[:, :8], X)
    assert torch.equal(sample_continuations(teacher(), X, 10, 0.0, samples=2), naive.repeat_interleave(2, 0))


def test_sampling_is_seeded_and_draws_from_the_tempered_distribution():
    draw = [sample_continuations(teacher(), X, 6, 1.0, torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])
    one = torch.zeros(1, 1, dtype=torch.int64)                     # 2,000 draws of the token after a 1-token prompt
    tokens = sample_continuations(teacher(), one, 1, 2.0, torch.Generator().manual_seed(0), samples=2000)[:, 1]
    with torch.no_grad():
        p = torch.softmax(teacher()(one)[0, -1] / 2.0, -1)
    freq = torch.bincount(tokens, minlength=61) / 2000.0
    assert (freq - p).abs().max().item() < 5 * (p.max().item() / 2000) ** 0.5
    assert p.min() > 0 and (freq > 0).sum() > 10                  # many tokens drawn, not just the mode


def test_an_on_policy_step_has_no_gradient_through_its_samples():
    """The loss's gradient is that of the divergence on the sampled ids held fixed (replayed from the same seed),
    scored by plain forwards of the whole sequences (the step runs each prompt once for its T / n = 2 samples)."""
    student = gpt_student(teacher(), 1)
    loss = GKDLoss(teacher(), beta=0.5, lam=1.0, n_new=4, generator=torch.Generator().manual_seed(3))
    loss(student, (0, X, X)).backward()
    got = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()
    ids = sample_continuations(student, X[:, :4], 4, 1.0, torch.Generator().manual_seed(3), samples=2)[:, :-1]
    with torch.no_grad():
        z_t = teacher()(ids, logits_to_keep=4)
    generalized_jsd(student(ids, logits_to_keep=4), z_t, 0.5).backward()
    for g, p in zip(got, student.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-7)


def test_off_policy_forward_kl_is_the_kd_loss():
    student = gpt_student(teacher(), 1)
    cache = TeacherCache(teacher())
    gkd = GKDLoss(cache, beta=0.0, lam=0.0)(student, (0, X, X))
    kd = KDLoss(cache, temperature=1.0, alpha=1.0)(student, (0, X, X))
    torch.testing.assert_close(gkd, kd)


def test_on_policy_training_lowers_the_reverse_kl_on_the_students_own_samples():
    student = gpt_student(teacher(), 1, from_teacher=False, seed=3)      # near-uniform against a peaked teacher
    before = own_sample_scores(student, teacher(), X[:, :4], 4, seed=5, samples=2)["reverse_kl"].mean()
    distill(student, BATCHES, 30, GKDLoss(teacher(), beta=1.0, lam=1.0, n_new=4,
                                          generator=torch.Generator().manual_seed(0)),
            optim=Optim(1e-2, warmup=2), progress=False)
    after = own_sample_scores(student.eval(), teacher(), X[:, :4], 4, seed=5, samples=2)["reverse_kl"].mean()
    assert after < 0.5 * before


def test_own_sample_scores_are_the_exact_reverse_kl_and_teacher_cross_entropy_along_the_samples():
    student = gpt_student(teacher(), 1)
    scores = own_sample_scores(student, teacher(), X, 5, seed=2, samples=3)
    ids = sample_continuations(student, X, 5, 1.0, torch.Generator().manual_seed(2), samples=3)
    with torch.no_grad():                                            # whole sequences, no cache
        log_ps, log_pt = (m(ids[:, :-1], logits_to_keep=5).double().log_softmax(-1) for m in (student, teacher()))
    torch.testing.assert_close(scores["reverse_kl"], kl_divergence(log_ps, log_pt).flatten(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(scores["teacher_nll"], -(log_ps.exp() * log_pt).sum(-1).flatten(), rtol=1e-5,
                               atol=1e-5)
    assert scores["reverse_kl"].shape == (3 * 3 * 5,) and (scores["reverse_kl"] > 0).all()
    own = own_sample_scores(teacher(), teacher(), X, 5, seed=2, samples=3)
    assert own["reverse_kl"].abs().max() < 1e-6                     # the teacher against itself: its entropy
    ids = sample_continuations(teacher(), X, 5, 1.0, torch.Generator().manual_seed(2), samples=3)
    with torch.no_grad():
        log_p = teacher()(ids[:, :-1], logits_to_keep=5).double().log_softmax(-1)
    torch.testing.assert_close(own["teacher_nll"], -(log_p.exp() * log_p).sum(-1).flatten(), rtol=1e-5, atol=1e-5)


WINDOWS = (torch.arange(14) % 61, torch.arange(20, 32) % 61, torch.arange(5, 15) % 61)
SAMPLE = EvalSample(WINDOWS, (6, 6, 6), torch.cat([w[6:] for w in WINDOWS]),
                    torch.repeat_interleave(torch.tensor([0, 1, 2]), torch.tensor([8, 6, 4])))


def test_a_run_is_determined_by_its_seed():
    prompts, documents = held_out_prompts(SAMPLE, 6)
    assert torch.equal(prompts[1], WINDOWS[1][:6]) and documents.tolist() == [0, 1, 2]
    runs = [on_policy_run(TeacherCache(teacher()), BATCHES, SAMPLE, prompts, 1.0, 0.5, depth=1, steps=2, n_new=4,
                          seed=s, samples=2) for s in (0, 0, 1)]
    for key in ("token_losses", "teacher_nll", "reverse_kl"):
        assert torch.equal(runs[0][key], runs[1][key]) and not torch.equal(runs[0][key], runs[2][key])
    assert runs[0]["teacher_nll"].shape == (3 * 2 * 4,)


def test_the_suite_records_every_run_and_reference_on_the_groups_of_its_experiment():
    """The path of `lab.bench distill-on-policy` on the tiny teacher: one seed's experiments, as add_seed takes."""
    settings = {**QUICK, "steps": 2, "seq": 8, "n_new": 4, "prompt_len": 6, "depth": 1, "samples": 2}
    references = reference_scores(teacher(), SAMPLE, settings)
    results = on_policy_losses(teacher(), torch.arange(200) % 61, SAMPLE, settings, 0, references)
    experiments: dict = {}
    add_seed(experiments, results)
    assert set(experiments["perplexity"]["sums"]) == set(QUICK["runs"])
    assert set(experiments["teacher_nll"]["sums"]) == set(QUICK["runs"]) | {"step 0", "teacher"}
    assert experiments["teacher_nll"]["sizes"] == [8, 8, 8] and experiments["perplexity"]["sizes"] == [8, 6, 4]
    reverse_kl = experiments["reverse_kl"]["sums"]
    assert sum(reverse_kl["step 0"][0]) > 0 and "teacher" not in reverse_kl
    assert all(lam == 1.0 for name, (lam, _) in QUICK["runs"].items() if name.startswith("on-policy"))
