"""Properties of lab.models' entry checks: a config field that is not a positive int (or a positive finite
number) is refused by name, strided token ids give the contiguous logits, train_lm refuses ids and windows
the model cannot read before it trains."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.models import GPTConfig, train_lm
from tests.properties import NOT_INTS
from tests.tiny_models import tiny_config, tiny_gpt

FAST = settings(max_examples=25)
INT_FIELDS = ("vocab_size", "context_length", "d_model", "n_layer", "n_head", "n_kv_head", "d_ff")


@functools.cache
def _model():
    return tiny_gpt()


@FAST
@given(field=st.sampled_from(INT_FIELDS), value=NOT_INTS)
def test_a_config_size_that_is_not_an_int_is_refused_by_name(field, value):
    with pytest.raises(TypeError, match=rf"^GPTConfig\.{field} must be an int, got "):
        tiny_config(**{field: value})


@FAST
@given(field=st.sampled_from(INT_FIELDS), value=st.integers(-3, 0))
def test_a_config_size_below_one_is_refused_by_name(field, value):
    with pytest.raises(ValueError, match=rf"^GPTConfig\.{field}={value} is out of range; allowed: \[1, inf\)"):
        tiny_config(**{field: value})


@FAST
@given(rope_theta=st.one_of(st.floats(max_value=0.0), st.just(float("inf")), st.just(float("nan"))),
       norm_eps=st.one_of(st.floats(max_value=-1e-12), st.just(float("inf")), st.just(float("nan"))))
def test_rope_theta_and_norm_eps_must_be_positive_finite_numbers(rope_theta, norm_eps):
    with pytest.raises(ValueError, match=r"^GPTConfig\.rope_theta=.* is out of range"):
        tiny_config(rope_theta=rope_theta)
    with pytest.raises(ValueError, match=r"^GPTConfig\.norm_eps=.* is out of range"):
        tiny_config(norm_eps=norm_eps)


@FAST
@given(rope_theta=st.floats(1.0, 1e6), norm_eps=st.floats(0.0, 1e-2), tie=st.booleans())
def test_valid_numbers_are_kept_as_given(rope_theta, norm_eps, tie):
    cfg = tiny_config(rope_theta=rope_theta, norm_eps=norm_eps, tie_embeddings=tie)
    assert dataclasses.astuple(cfg)[-3:] == (rope_theta, norm_eps, tie) and isinstance(cfg, GPTConfig)


@FAST
@given(seed=st.integers(0, 2**16), B=st.integers(1, 3), T=st.integers(1, 8), how=st.sampled_from(["T", "step"]),
       keep=st.integers(0, 8))
def test_strided_token_ids_give_the_contiguous_logits(seed, B, T, how, keep):
    ids = torch.randint(0, 61, (B, T), generator=torch.Generator().manual_seed(seed))
    view = ids.T.contiguous().T if how == "T" else torch.stack([ids, ids], dim=-1)[..., 0]
    assert torch.equal(view, ids)
    keep = min(keep, T)
    with torch.no_grad():
        torch.testing.assert_close(_model()(view, logits_to_keep=keep), _model()(ids, logits_to_keep=keep),
                                   rtol=0, atol=0)
        with pytest.raises(ValueError, match=rf"logits_to_keep={T + 1 + keep} is out of range; allowed: \[0, {T}\]"):
            _model()(ids, logits_to_keep=T + 1 + keep)


@FAST
@given(shift=st.one_of(st.integers(-100, -1), st.integers(61, 200)), seq_len=st.integers(17, 64))
def test_train_lm_refuses_ids_and_windows_the_model_cannot_read(shift, seq_len):
    tokens = torch.arange(300) % 61
    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    bad = tokens.clone()
    bad[shift % 300] = shift
    with pytest.raises(ValueError, match=r"^train_tokens must hold ids in \[0, 61\)"):
        train_lm(model, bad, steps=1, batch_size=2, seq_len=8, progress=False)
    with pytest.raises(ValueError, match=rf"^seq_len={seq_len} is out of range; allowed: \[1, 16\]"):
        train_lm(model, tokens, steps=1, batch_size=2, seq_len=seq_len, progress=False)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # refused before any step
