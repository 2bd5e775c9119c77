"""Properties of lab.distill's losses on random valid and invalid input (hypothesis): KL ≥ 0 with equality for
equal inputs, strided / transposed views give the contiguous result, NaN is refused naming its argument, sizes
and temperatures that are bools, fractions or out of range are refused naming theirs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.distill import (cross_entropy, hidden_state_loss, kd_loss, kl_divergence, log_softmax, relation_kl,
                         teacher_layer_indices, uniform_layer_map)

SETTINGS = settings(max_examples=30, deadline=None)
seeds = st.integers(0, 2**16)
shapes = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 7))        # (B, T, V)
scales = st.floats(0.1, 30.0)
temperatures = st.floats(0.25, 8.0)
bad_temperatures = st.one_of(st.floats(max_value=0.0), st.sampled_from([math.nan, math.inf, -math.inf]))
not_ints = st.one_of(st.booleans(), st.floats(allow_nan=False).filter(lambda v: v != int(v) if math.isfinite(v)
                                                                      else True), st.text(max_size=2))


def randn(shape, seed, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def strided(x: torch.Tensor) -> torch.Tensor:
    """The same values as x in a non-contiguous view (dims reversed in memory)."""
    return x.permute(*reversed(range(x.dim()))).contiguous().permute(*reversed(range(x.dim())))


@SETTINGS
@given(shape=shapes, seed=seeds, scale=scales)
def test_kl_divergence_is_nonnegative_and_zero_for_equal_inputs(shape, seed, scale):
    log_p, log_q = (randn(shape, s, scale).log_softmax(-1) for s in (seed, seed + 1))
    kl = kl_divergence(log_p, log_q)
    assert kl.shape == shape[:-1] and (kl >= -1e-6).all()
    assert (kl_divergence(log_p, log_p) == 0).all()
    torch.testing.assert_close(kl_divergence(strided(log_p), strided(log_q)), kl)


@SETTINGS
@given(shape=shapes, seed=seeds, shift=st.floats(0.01, 50.0), sign=st.sampled_from([-1, 1]))
def test_kl_divergence_refuses_rows_that_are_not_log_probabilities(shape, seed, shift, sign):
    log_p = randn(shape, seed).log_softmax(-1)
    with pytest.raises(ValueError, match="log_q must hold log-probabilities"):
        kl_divergence(log_p, log_p + sign * shift)


@SETTINGS
@given(shape=shapes, seed=seeds, scale=scales, tau=temperatures, kind=st.sampled_from(["forward", "reverse"]))
def test_kd_loss_is_nonnegative_zero_for_equal_logits_and_the_same_on_strided_views(shape, seed, scale, tau, kind):
    s, t = randn(shape, seed, scale), randn(shape, seed + 1, scale)
    loss = kd_loss(s, t, temperature=tau, kind=kind)
    assert loss.item() >= -1e-6
    assert kd_loss(t, t, temperature=tau, kind=kind).item() == 0
    torch.testing.assert_close(kd_loss(strided(s), strided(t), temperature=tau, kind=kind), loss)


@SETTINGS
@given(shape=shapes, seed=seeds, data=st.data())
def test_kd_loss_refuses_nan_or_inf_at_a_counted_position_naming_its_argument(shape, seed, data):
    s, t = randn(shape, seed), randn(shape, seed + 1)
    where = tuple(data.draw(st.integers(0, n - 1)) for n in shape)
    name = data.draw(st.sampled_from(["student_logits", "teacher_logits"]))
    bad = {"student_logits": s.clone(), "teacher_logits": t.clone()}
    bad[name][where] = data.draw(st.sampled_from([math.nan, math.inf]))
    with pytest.raises(ValueError, match=f"{name}: NaN"):
        kd_loss(**bad, kind=data.draw(st.sampled_from(["forward", "reverse"])))


@SETTINGS
@given(shape=shapes, seed=seeds, tau=temperatures)
def test_log_softmax_gives_distributions_and_the_same_on_strided_views(shape, seed, tau):
    x = randn(shape, seed, 10.0)
    out = log_softmax(x, tau)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(shape[:-1]))
    torch.testing.assert_close(out, F.log_softmax(x / tau, -1))
    torch.testing.assert_close(log_softmax(strided(x), tau), out)


@SETTINGS
@given(tau=st.one_of(bad_temperatures, st.booleans()))
def test_every_loss_refuses_a_temperature_that_is_not_a_positive_number(tau):
    x = randn((2, 5), 0)
    error = TypeError if isinstance(tau, bool) else ValueError
    for call in (lambda: log_softmax(x, tau), lambda: kd_loss(x, x, temperature=tau)):
        with pytest.raises(error, match="temperature"):
            call()


@SETTINGS
@given(shape=shapes, seed=seeds, data=st.data())
def test_cross_entropy_matches_torch_with_ignored_positions_and_strided_views(shape, seed, data):
    logits = randn(shape, seed, 5.0)
    labels = torch.tensor(data.draw(st.lists(st.integers(-1, shape[-1] - 1), min_size=shape[0] * shape[1],
                                             max_size=shape[0] * shape[1]))).view(shape[:-1])
    labels[0, 0] = max(int(labels[0, 0]), 0)                       # at least one position counts
    ce = cross_entropy(logits, labels, ignore_index=-1)
    torch.testing.assert_close(ce, F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-1))
    torch.testing.assert_close(cross_entropy(strided(logits), strided(labels), ignore_index=-1), ce)


@SETTINGS
@given(ignore_index=not_ints)
def test_cross_entropy_and_kd_loss_refuse_an_ignore_index_that_is_not_an_int(ignore_index):
    x, y = randn((2, 5), 0), torch.zeros(2, dtype=torch.long)
    for call in (lambda: cross_entropy(x, y, ignore_index), lambda: kd_loss(x, x, y, ignore_index=ignore_index)):
        with pytest.raises(TypeError, match="ignore_index must be an int"):
            call()


@SETTINGS
@given(B=st.integers(1, 2), H=st.integers(1, 3), T=st.integers(1, 5), seed=seeds)
def test_relation_kl_is_nonnegative_zero_for_equal_maps_and_the_same_on_strided_views(B, H, T, seed):
    causal = torch.ones(T, T, dtype=torch.bool).triu(1)
    a, b = (randn((B, H, T, T), s, 3.0).masked_fill(causal, -math.inf).log_softmax(-1) for s in (seed, seed + 1))
    kl = relation_kl(a, b)
    assert kl.item() >= -1e-6 and relation_kl(a, a).item() == 0
    torch.testing.assert_close(relation_kl(strided(a), a.transpose(1, 2).contiguous().transpose(1, 2)),
                               relation_kl(a, a))
    torch.testing.assert_close(relation_kl(strided(a), strided(b)), kl)


@SETTINGS
@given(B=st.integers(1, 2), T=st.integers(1, 4), C=st.integers(1, 6), seed=seeds, kind=st.sampled_from(["cosine",
                                                                                                         "mse"]))
def test_hidden_state_loss_is_a_bounded_distance_and_the_same_on_strided_views(B, T, C, seed, kind):
    hs, ht = [randn((B, T, C), seed)], [randn((B, T, C), seed + 1)]
    loss = hidden_state_loss(hs, ht, [(0, 0)], kind)
    assert loss.item() >= 0 and (kind == "mse" or loss.item() <= 2 + 1e-6)
    assert hidden_state_loss(hs, hs, [(0, 0)], kind).item() < 1e-5
    torch.testing.assert_close(hidden_state_loss([strided(hs[0])], [strided(ht[0])], [(0, 0)], kind), loss)


@SETTINGS
@given(n_teacher=st.integers(1, 24), data=st.data())
def test_layer_maps_pick_increasing_teacher_layers_in_range(n_teacher, data):
    n_student = data.draw(st.integers(1, n_teacher))
    indices = teacher_layer_indices(n_teacher, n_student)
    assert len(indices) == n_student and indices[0] == 0 and indices[-1] < n_teacher
    assert all(a < b for a, b in zip(indices, indices[1:]))
    pairs = uniform_layer_map(n_student, n_teacher)
    assert [m for m, _ in pairs] == list(range(1, n_student + 1)) and pairs[-1][1] == n_teacher
    assert all(1 <= j <= n_teacher for _, j in pairs)


@SETTINGS
@given(value=st.one_of(not_ints, st.integers(max_value=0)), which=st.sampled_from(["n_student", "n_teacher"]))
def test_layer_maps_refuse_a_depth_that_is_not_a_positive_int_naming_it(value, which):
    args = {"n_student": 2, "n_teacher": 4, which: value}
    error = ValueError if isinstance(value, int) and not isinstance(value, bool) else TypeError
    for fn in (teacher_layer_indices, uniform_layer_map):
        with pytest.raises(error, match=which):
            fn(**args)
