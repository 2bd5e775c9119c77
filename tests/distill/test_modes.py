"""lab.distill.modes: forward KL fits by moment matching (the closed form of an exponential family),
reverse KL fits one mode (KL = −log w for a mode of weight w, when the modes are far apart)."""

from __future__ import annotations

import math

import pytest
import torch

from lab.distill.modes import fit_gaussian_student, gaussian_logits

V = 64
i = torch.arange(V, dtype=torch.float64)


def bimodal(w: float = 0.7, a: float = 20, b: float = 44, sd: float = 2.0) -> torch.Tensor:
    """log of w·N(a, sd²) + (1 − w)·N(b, sd²) on the bins, up to a constant."""
    return torch.logaddexp(math.log(w) - (i - a) ** 2 / (2 * sd**2), math.log(1 - w) - (i - b) ** 2 / (2 * sd**2))


def test_gaussian_logits_are_a_discretised_gaussian():
    z = gaussian_logits(torch.tensor(10.5, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64).log(), V)
    ref = torch.exp(-(i - 10.5) ** 2 / 18)
    assert torch.allclose(z.softmax(-1), ref / ref.sum())


def test_forward_kl_fit_matches_the_teachers_moments():
    z_t = bimodal()
    fit = fit_gaussian_student(z_t, "forward", mean=28.0, scale=4.0, steps=600)
    p_t, p_s = z_t.softmax(-1), fit["probs"]
    for k in (1, 2):                                        # E_S[i^k] = E_T[i^k]
        assert (p_s * i**k).sum().item() == pytest.approx((p_t * i**k).sum().item(), rel=1e-4)
    assert p_s[27:38].sum() > 50 * p_t[27:38].sum()         # it spreads over the gap between the modes


def test_reverse_kl_fit_locks_onto_one_mode():
    z_t = bimodal()
    fit = fit_gaussian_student(z_t, "reverse", mean=28.0, scale=4.0, steps=300)
    assert fit["mean"] == pytest.approx(20.0, abs=1e-3) and fit["scale"] == pytest.approx(2.0, abs=1e-3)
    assert fit["loss"] == pytest.approx(-math.log(0.7), abs=1e-6)    # the mode's component, weight 0.7
    assert fit["probs"][:32].sum() > 1 - 1e-6                  # all on the left half


def test_bad_input_raises():
    with pytest.raises(ValueError, match="kind='both'"):
        fit_gaussian_student(bimodal(), "both", 28.0, 4.0)
    with pytest.raises(ValueError, match="scale=0"):
        fit_gaussian_student(bimodal(), "forward", 28.0, 0.0)
    with pytest.raises(ValueError, match="teacher_logits must have 1 dimensions"):
        fit_gaussian_student(bimodal()[None], "forward", 28.0, 4.0)
