"""lab.distill.losses against independent references: `F.kl_div`, `F.cross_entropy`, the closed-form
gradient (p_S − p_T)·τ/N, `F.cosine_similarity` / `F.mse_loss`, and a float64 brute-force KL
(MiniLM's loss on a real model's relations: `tests/distill/test_loop.py`); GKD's generalized JSD against its
definition in float64 probabilities and its limits at β → 0 and β → 1."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lab.distill import cross_entropy, generalized_jsd, hidden_state_loss, kd_loss, minilm_loss, relation_kl


def _logits(*shape, seed=0, scale=3.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()


def _reference_kd(s, t, tau, reverse=False):
    """τ²·F.kl_div(log_softmax(s/τ), log_softmax(t/τ), log_target=True, reduction="batchmean") on (N, V)."""
    ls, lt = F.log_softmax(s.flatten(0, -2) / tau, -1), F.log_softmax(t.flatten(0, -2) / tau, -1)
    if reverse:
        ls, lt = lt, ls
    return tau ** 2 * F.kl_div(ls, lt, log_target=True, reduction="batchmean")


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0, 8.0])
@pytest.mark.parametrize("shape", [(6, 11), (2, 5, 13)])
@pytest.mark.parametrize("kind", ["forward", "reverse"])
def test_kd_loss_equals_torch_kl_div_batchmean(tau, shape, kind):
    s, t = _logits(*shape, seed=1), _logits(*shape, seed=2)
    got = kd_loss(s, t, temperature=tau, kind=kind)
    torch.testing.assert_close(got, _reference_kd(s, t, tau, reverse=kind == "reverse"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_kd_gradient_is_closed_form(tau):
    s, t = _logits(7, 10, seed=3).requires_grad_(), _logits(7, 10, seed=4)
    kd_loss(s, t, temperature=tau).backward()
    expected = (torch.softmax(s.detach() / tau, -1) - torch.softmax(t / tau, -1)) * tau / s.shape[0]
    torch.testing.assert_close(s.grad, expected, rtol=1e-5, atol=1e-7)


def test_kd_zero_for_identical_logits_and_nonnegative():
    s = _logits(4, 9, 17, seed=5)
    assert kd_loss(s, s.clone(), temperature=2.0).abs().item() < 1e-6
    for seed in range(10):
        for kind in ("forward", "reverse"):
            assert kd_loss(_logits(3, 17, seed=seed), _logits(3, 17, seed=seed + 50), kind=kind).item() >= 0


def test_reverse_kl_differs_from_forward_on_asymmetric_example():
    # teacher bimodal, student on one mode: reverse KL (mode seeking) is smaller than forward (mode covering)
    t = torch.tensor([[4.0, 4.0, -4.0]]).log_softmax(-1)
    s = torch.tensor([[4.0, -4.0, -4.0]]).log_softmax(-1)
    forward, reverse = kd_loss(s, t, temperature=1.0), kd_loss(s, t, temperature=1.0, kind="reverse")
    p, q = t.exp().double(), s.exp().double()
    torch.testing.assert_close(forward.double(), (p * (p / q).log()).sum(), rtol=1e-4, atol=0)
    torch.testing.assert_close(reverse.double(), (q * (q / p).log()).sum(), rtol=1e-4, atol=0)
    assert forward.item() > 2 * reverse.item()


def test_alpha_mixes_soft_term_and_cross_entropy():
    s, t = _logits(3, 6, 12, seed=6), _logits(3, 6, 12, seed=7)
    y = torch.randint(0, 12, (3, 6), generator=torch.Generator().manual_seed(0))
    tau, alpha = 2.0, 0.3
    expected = alpha * _reference_kd(s, t, tau) + (1 - alpha) * F.cross_entropy(s.flatten(0, 1), y.flatten())
    torch.testing.assert_close(kd_loss(s, t, y, temperature=tau, alpha=alpha), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cross_entropy(s, y), F.cross_entropy(s.flatten(0, 1), y.flatten()))


def test_padded_positions_do_not_contribute():
    s, t = _logits(2, 8, 10, seed=8), _logits(2, 8, 10, seed=9)
    y = torch.randint(0, 10, (2, 8), generator=torch.Generator().manual_seed(1))
    y[0, 5:] = -100
    y[1, 7] = -100
    valid = y != -100
    s1 = s.clone().requires_grad_()
    loss = kd_loss(s1, t, y, temperature=2.0, alpha=0.5)
    loss.backward()
    expected = 0.5 * _reference_kd(s[valid], t[valid], 2.0) + 0.5 * F.cross_entropy(s[valid], y[valid])
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert torch.all(s1.grad[~valid] == 0)
    s2, t2 = s.clone(), t.clone()
    s2[~valid], t2[~valid] = 1e3, -1e3        # garbage at padded positions changes nothing
    torch.testing.assert_close(kd_loss(s2, t2, y, temperature=2.0, alpha=0.5), loss.detach())


def test_kd_is_stable_for_huge_logits():
    s, t = _logits(4, 50, seed=10, scale=1e4), _logits(4, 50, seed=11, scale=1e4)
    loss = kd_loss(s, t, temperature=1.0)
    assert math.isfinite(loss.item())
    torch.testing.assert_close(loss.double(), _reference_kd(s.double(), t.double(), 1.0), rtol=1e-4, atol=1e-3)


def test_teacher_zero_probabilities_give_finite_loss_and_gradient():
    t = torch.tensor([[0.0, 1.0, float("-inf")]])
    s = torch.tensor([[0.5, 0.2, -1.0]], requires_grad=True)
    loss = kd_loss(s, t, temperature=1.0)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(s.grad).all()


S, TT, Y = _logits(2, 3, 5), _logits(2, 3, 5, seed=1), torch.zeros(2, 3, dtype=torch.long)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"temperature": 0.0}, ValueError, "temperature"),
    ({"temperature": -1.0}, ValueError, "temperature"),
    ({"alpha": 1.5}, ValueError, "alpha"),
    ({"alpha": -0.1}, ValueError, "alpha"),
    ({"kind": "symmetric"}, ValueError, "kind"),
    ({"teacher_logits": _logits(2, 3, 6)}, ValueError, "vocabulary"),
    ({"teacher_logits": _logits(2, 4, 5)}, ValueError, "same shape"),
    ({"labels": torch.full((2, 3), 5)}, ValueError, r"\[0, 5\)"),
    ({"labels": torch.full((2, 3), -3)}, ValueError, r"\[0, 5\)"),
    ({"labels": torch.zeros(2, 4, dtype=torch.long)}, ValueError, "labels must have shape"),
    ({"labels": torch.full((2, 3), -100)}, ValueError, "no valid position"),
    ({"labels": torch.zeros(2, 3)}, TypeError, "labels"),
    ({"student_logits": torch.zeros(5)}, ValueError, "at least 2 dims"),
])
def test_kd_bad_input_raises(kwargs, error, match):
    args = {"student_logits": S, "teacher_logits": TT, "labels": Y, **kwargs}
    with pytest.raises(error, match=match):
        kd_loss(**args)


def test_hidden_state_loss_matches_torch_references():
    g = torch.Generator().manual_seed(0)
    hs = [torch.randn(2, 5, 8, generator=g) for _ in range(3)]
    ht = [torch.randn(2, 5, 8, generator=g) for _ in range(5)]
    pairs = [(1, 2), (2, 4)]
    cos = torch.stack([1 - F.cosine_similarity(hs[i], ht[j], dim=-1).mean() for i, j in pairs]).mean()
    torch.testing.assert_close(hidden_state_loss(hs, ht, pairs), cos)
    mse = torch.stack([F.mse_loss(hs[i], ht[j]) for i, j in pairs]).mean()
    torch.testing.assert_close(hidden_state_loss(hs, ht, pairs, kind="mse"), mse)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    cos_masked = torch.stack([1 - F.cosine_similarity(hs[i][mask], ht[j][mask], dim=-1).mean() for i, j in pairs]).mean()
    torch.testing.assert_close(hidden_state_loss(hs, ht, pairs, mask=mask), cos_masked)
    proj = torch.nn.Linear(4, 8)
    narrow = [h[..., :4] for h in hs]
    torch.testing.assert_close(hidden_state_loss(narrow, ht, pairs, kind="mse", projection=proj),
                               torch.stack([F.mse_loss(proj(narrow[i]), ht[j]) for i, j in pairs]).mean())


def _causal_log_probs(B, H, T, seed):
    scores = torch.randn(B, H, T, T, generator=torch.Generator().manual_seed(seed))
    return scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).log_softmax(-1)


def _brute_force_kl(log_s, log_t, valid):
    """Mean over heads and valid queries of Σ_k p_t log(p_t / p_s), one entry at a time, float64."""
    B, H, T, _ = log_s.shape
    total, count = 0.0, 0
    for b in range(B):
        for q in range(T):
            if not valid[b, q]:
                continue
            for h in range(H):
                count += 1
                for k in range(q + 1):      # keys beyond q have zero probability under both
                    lp, lq = log_t[b, h, q, k].double(), log_s[b, h, q, k].double()
                    total += lp.exp() * (lp - lq)
    return total / count


def test_relation_kl_is_mean_kl_over_heads_and_queries():
    a_s, a_t = _causal_log_probs(2, 3, 4, seed=0), _causal_log_probs(2, 3, 4, seed=10)
    every = torch.ones(2, 4, dtype=torch.bool)
    torch.testing.assert_close(relation_kl(a_s, a_t).double(), _brute_force_kl(a_s, a_t, every), rtol=1e-5, atol=1e-7)
    mask = every.clone()
    mask[1, 2:] = False
    torch.testing.assert_close(relation_kl(a_s, a_t, mask).double(), _brute_force_kl(a_s, a_t, mask),
                               rtol=1e-5, atol=1e-7)
    student = a_s.clone().requires_grad_()
    relation_kl(student, a_t).backward()
    assert torch.isfinite(student.grad).all()
    assert relation_kl(a_t, a_t).abs().item() < 1e-6


def test_minilm_loss_adds_the_attention_and_the_value_relation_terms():
    a_s, a_t, v_s, v_t = (_causal_log_probs(2, 3, 5, seed) for seed in (1, 2, 3, 4))
    every = torch.ones(2, 5, dtype=torch.bool)
    expected = _brute_force_kl(a_s, a_t, every) + _brute_force_kl(v_s, v_t, every)
    torch.testing.assert_close(minilm_loss(a_s, a_t, v_s, v_t).double(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("call, match", [
    (lambda: hidden_state_loss([torch.zeros(1, 2, 3)], [torch.zeros(1, 2, 3)], [(1, 0)]), "layer_map"),
    (lambda: hidden_state_loss([torch.zeros(1, 2, 3)], [torch.zeros(1, 2, 3)], []), "at least one"),
    (lambda: hidden_state_loss([torch.zeros(1, 2, 3)], [torch.zeros(1, 2, 4)], [(0, 0)]), "projection"),
    (lambda: hidden_state_loss([torch.zeros(1, 2, 3)], [torch.zeros(1, 2, 3)], [(0, 0)], kind="l1"), "kind"),
    (lambda: hidden_state_loss([torch.zeros(1, 2, 3)], [torch.zeros(1, 2, 3)], [(0, 0)],
                               mask=torch.zeros(1, 2, dtype=torch.bool)), "no position"),
    (lambda: relation_kl(torch.zeros(1, 2, 3, 3), torch.zeros(1, 4, 3, 3)), "same shape"),
    (lambda: relation_kl(torch.zeros(2, 3, 3), torch.zeros(2, 3, 3)), "same shape"),
])
def test_feature_losses_bad_input_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_kd_loss_keeps_float64_precision_and_passes_gradcheck():
    """float64 logits are not rounded to float32: the KL of two nearly equal distributions keeps
    its value (the bug: 1.9e-7, possibly negative, for an exact 4.8e-9-sized KL) and gradcheck holds."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4, 50, dtype=torch.float64, generator=gen)
    s = z + 1e-4 * torch.randn(4, 50, dtype=torch.float64, generator=gen)
    tau = 2.0
    p_t, p_s = torch.softmax(z / tau, -1), torch.softmax(s / tau, -1)
    exact = tau**2 * (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
    loss = kd_loss(s, z, temperature=tau)
    assert loss.dtype == torch.float64
    assert 0 < loss.item() and loss.item() == pytest.approx(exact.item(), rel=1e-6)
    s = s.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: kd_loss(x, z, temperature=tau), (s,))


def test_kd_loss_divides_bf16_logits_by_the_temperature_after_upcasting():
    gen = torch.Generator().manual_seed(1)
    s, z = (10 * torch.randn(8, 100, generator=gen)).bfloat16(), (10 * torch.randn(8, 100, generator=gen)).bfloat16()
    exact = kd_loss(s.double(), z.double(), temperature=3.0)
    assert kd_loss(s, z, temperature=3.0).item() == pytest.approx(exact.item(), rel=1e-5)


@pytest.mark.parametrize("temperature", [math.inf, math.nan, -1.0, 0.0])
def test_kd_loss_rejects_a_temperature_that_is_not_finite_and_positive(temperature):
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(torch.randn(2, 5), torch.randn(2, 5), temperature=temperature)


def test_kd_loss_rejects_integer_logits():
    with pytest.raises(TypeError, match="student_logits"):
        kd_loss(torch.ones(2, 5, dtype=torch.int64), torch.randn(2, 5))


def _direct_jsd(s, t, beta, tau=1.0):
    """JSD_β(P ‖ Q) per position from probabilities in float64: P = softmax(t/τ), Q = softmax(s/τ) (Agarwal et al.
    2024, eq. 1), M = βP + (1 − β)Q."""
    p, q = torch.softmax(t.double() / tau, -1), torch.softmax(s.double() / tau, -1)
    m = beta * p + (1 - beta) * q
    return beta * (p * (p / m).log()).sum(-1) + (1 - beta) * (q * (q / m).log()).sum(-1)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_generalized_jsd_is_its_definition_on_the_masked_positions(beta, tau):
    s, t = _logits(2, 5, 13, seed=11), _logits(2, 5, 13, seed=12)
    mask = torch.rand(2, 5, generator=torch.Generator().manual_seed(3)) < 0.6
    got = generalized_jsd(s, t, beta, mask=mask, temperature=tau)
    torch.testing.assert_close(got.double(), _direct_jsd(s, t, beta, tau)[mask].mean(), rtol=1e-5, atol=1e-7)
    assert 0 < got.item() < math.log(2)  # JSD_β ≤ −β log β − (1 − β) log(1 − β) ≤ log 2


def test_generalized_jsd_at_half_is_symmetric_and_zero_only_for_equal_logits():
    s, t = _logits(6, 17, seed=13), _logits(6, 17, seed=14)
    torch.testing.assert_close(generalized_jsd(s, t, 0.5), generalized_jsd(t, s, 0.5), rtol=1e-6, atol=1e-7)
    assert generalized_jsd(s, s.clone(), 0.3).abs().item() < 1e-6


def test_generalized_jsd_ends_are_the_kls_and_the_limits_of_the_scaled_jsd():
    """β = 0: KL(P ‖ Q) = kd_loss(forward)/τ²; β = 1: KL(Q ‖ P); and JSD_β/β → KL(P ‖ Q) as β → 0,
    JSD_β/(1 − β) → KL(Q ‖ P) as β → 1 (the paper's convention: small β is forward, β near 1 reverse)."""
    s, t = _logits(4, 3, 11, seed=15, scale=2.0).double(), _logits(4, 3, 11, seed=16, scale=2.0).double()
    forward, reverse = generalized_jsd(s, t, 0.0, temperature=2.0), generalized_jsd(s, t, 1.0, temperature=2.0)
    torch.testing.assert_close(forward, kd_loss(s, t, temperature=2.0) / 4, rtol=1e-12, atol=0)
    torch.testing.assert_close(reverse, kd_loss(s, t, temperature=2.0, kind="reverse") / 4, rtol=1e-12, atol=0)
    for eps in (1e-3, 1e-5):
        small, large = generalized_jsd(s, t, eps, temperature=2.0), generalized_jsd(s, t, 1 - eps, temperature=2.0)
        torch.testing.assert_close(small / eps, forward, rtol=20 * eps, atol=0)
        torch.testing.assert_close(large / eps, reverse, rtol=20 * eps, atol=0)
    assert generalized_jsd(s, t, 1e-5).item() < 1e-3 * generalized_jsd(s, t, 0.0).item()    # the jump at β = 0


def test_generalized_jsd_is_stable_for_huge_logits_and_gives_the_teacher_no_gradient():
    s = _logits(3, 9, seed=17, scale=1e4).requires_grad_()
    t = _logits(3, 9, seed=18, scale=1e4).requires_grad_()
    for beta in (0.0, 0.5, 1.0):
        loss = generalized_jsd(s, t, beta)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(s.grad).all() and t.grad is None
        s.grad = None
