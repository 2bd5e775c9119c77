"""Properties of lab.params on generated input: strided views act as their contiguous copies, bad sizes and
dtypes are refused naming the argument, the memory formulas give non-negative ints that add up."""

from __future__ import annotations

import functools
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lab.params import (Adam8bit, DynamicLossScaler, LoRALinear, OffloadedGPT, checkpoint_layers, float_format_info,
                        gpt_param_count, inference_memory, kv_cache_bytes, load_safetensors, save_safetensors,
                        share_layers, training_memory)
from lab.params.precision import FORMATS
from tests.tiny_models import tiny_config, tiny_gpt

CFG = tiny_config(n_layer=4)
SETTINGS = settings(max_examples=25, deadline=None)

# A bad size: a bool (never an int), a float (even a whole one), or an int below 1.
bad_sizes = st.one_of(st.booleans(), st.floats(allow_nan=True, allow_infinity=True), st.integers(max_value=0))


def _refused(call, name: str, value) -> None:
    """``call(value)`` raises TypeError (bool, float) or ValueError (int out of range) naming ``name``."""
    error = ValueError if type(value) is int else TypeError
    with pytest.raises(error, match=rf"^{re.escape(name)}(=| must)"):
        call(value)


@functools.cache
def _offloaded() -> OffloadedGPT:
    return OffloadedGPT(tiny_gpt())


@SETTINGS
@given(value=bad_sizes)
def test_bad_sizes_are_refused_naming_the_argument(value):
    _refused(lambda v: gpt_param_count(CFG, v), "n_groups", value)
    _refused(lambda v: kv_cache_bytes(CFG, v, 4), "batch", value)
    _refused(lambda v: inference_memory(CFG, 1, v), "seq_len", value)
    _refused(lambda v: training_memory(10, config=CFG, batch=1, seq_len=4, checkpoint_every=v), "checkpoint_every",
             value)
    _refused(lambda v: DynamicLossScaler(growth_interval=v), "growth_interval", value)
    _refused(lambda v: Adam8bit([nn.Parameter(torch.zeros(2))], block_size=v), "block_size", value)
    _refused(lambda v: LoRALinear(nn.Linear(4, 4), v, 1.0), "r", value)


@SETTINGS
@given(value=bad_sizes)
def test_bad_layer_counts_leave_the_model_unchanged(value):
    model = tiny_gpt()
    layers = list(model.layers)
    _refused(lambda v: share_layers(model, v), "n_groups", value)
    _refused(lambda v: checkpoint_layers(model, v), "every", value)
    assert list(model.layers) == layers


@SETTINGS
@given(n_groups=st.integers(1, 8))
def test_param_count_is_a_count_of_the_shared_model(n_groups):
    if CFG.n_layer % n_groups:
        with pytest.raises(ValueError, match=f"n_groups={n_groups} is not allowed; use a divisor of n_layer=4"):
            gpt_param_count(CFG, n_groups)
    else:
        model = share_layers(tiny_gpt(n_layer=4), n_groups)
        assert gpt_param_count(CFG, n_groups) == sum(p.numel() for p in model.parameters())


@SETTINGS
@given(batch=st.integers(1, 64), seq_len=st.integers(1, 4096),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, "fp32", "bf16", "float16"]))
def test_inference_memory_adds_up(batch, seq_len, dtype):
    mem = inference_memory(CFG, batch, seq_len, dtype)
    assert all(type(v) is int and v > 0 for v in mem.values())
    assert mem["total"] == mem["weights"] + mem["kv_cache"]
    assert mem["kv_cache"] == batch * seq_len * kv_cache_bytes(CFG, 1, 1, dtype)


@SETTINGS
@given(shapes=st.lists(st.lists(st.integers(0, 300), min_size=0, max_size=3).map(tuple), min_size=1, max_size=4),
       optimizer=st.sampled_from(["adam", "sgd", "adafactor", "adam8bit"]),
       precision=st.sampled_from(["fp32", "bf16-mixed", "bf16"]))
def test_training_memory_adds_up(shapes, optimizer, precision):
    n = sum(math.prod(s) for s in shapes)
    mem = training_memory(n, optimizer, precision, shapes=shapes)
    assert all(type(v) is int and v >= 0 for v in mem.values())
    assert mem["total"] == sum(v for k, v in mem.items() if k != "total")
    with pytest.raises(ValueError, match=f"shapes hold {n} parameters but n_params={n + 1}"):
        training_memory(n + 1, "adafactor", precision, shapes=shapes)


@SETTINGS
@given(dtype=st.sampled_from([torch.int8, torch.int32, torch.int64, torch.bool, torch.uint8, torch.complex64,
                              torch.float8_e8m0fnu, torch.float8_e4m3fnuz, "float32", 32, None]))
def test_float_format_info_refuses_what_is_not_a_float_format(dtype):
    error = ValueError if isinstance(dtype, torch.dtype) else TypeError
    with pytest.raises(error, match="dtype"):
        float_format_info(dtype)


def test_float_format_info_of_every_format_is_finite_and_positive():
    for dtype in FORMATS:
        info = float_format_info(dtype)
        numbers = [info[k] for k in ("max", "smallest_normal", "smallest_subnormal", "eps")]
        assert all(math.isfinite(x) and x > 0 for x in numbers)
        assert info["smallest_subnormal"] < info["smallest_normal"] < 1 < info["max"]


@SETTINGS
@given(rows=st.integers(1, 5), cols=st.integers(1, 5), step=st.integers(1, 3), mmap=st.booleans())
def test_strided_and_transposed_views_save_as_their_contiguous_copies(tmp_path_factory, rows, cols, step, mmap):
    gen = torch.Generator().manual_seed(rows * 100 + cols * 10 + step)
    a, b = torch.randn(rows, cols, generator=gen), torch.randn(rows * step, cols * step, generator=gen)
    tensors = {"t": a.t(), "s": b[::step, ::step], "one": torch.randn(3, 3, generator=gen)[1:2, ::3]}
    path = tmp_path_factory.mktemp("views") / "v.safetensors"
    save_safetensors(tensors, path)
    loaded = load_safetensors(path, mmap=mmap)
    assert all(torch.equal(loaded[k], t.contiguous()) for k, t in tensors.items())


@SETTINGS
@given(r0=st.integers(0, 3), c0=st.integers(0, 4), dr=st.integers(0, 2), dc=st.integers(0, 2),
       r1=st.integers(1, 4), c1=st.integers(1, 4))
def test_views_sharing_an_element_are_refused(tmp_path_factory, r0, c0, dr, dc, r1, c1):
    """Two views of one storage that hold a common element would load untied: refused, even when strided."""
    base = torch.arange(30.0).view(5, 6)
    first = base[r0:r0 + 2, c0:c0 + 2]                 # holds element (r0 + dr', c0 + dc') for dr', dc' < 2
    p, q = min(r0 + dr, r0 + 1), min(c0 + dc, c0 + 1)
    second = base[p:p + r1, q:q + c1].t()              # starts at (p, q), an element of first
    with pytest.raises(ValueError, match="tensors .* share memory"):
        save_safetensors({"first": first, "second": second}, tmp_path_factory.mktemp("tied") / "x.safetensors")


@SETTINGS
@given(batch=st.integers(1, 3), T=st.integers(2, 5), r=st.integers(1, 4))
def test_lora_of_a_transposed_input_is_the_lora_of_its_copy(batch, T, r):
    torch.manual_seed(batch * 100 + T * 10 + r)
    layer = LoRALinear(nn.Linear(8, 6), r, 2.0)
    nn.init.normal_(layer.B)
    x = torch.randn(batch, 8, T).transpose(1, 2)      # (batch, T, 8), not contiguous
    assert not x.is_contiguous()
    torch.testing.assert_close(layer(x), layer(x.contiguous()), rtol=1e-6, atol=1e-6)   # BLAS order only


@SETTINGS
@given(B=st.integers(1, 3), T=st.integers(1, 8), step=st.integers(2, 3),
       mode=st.sampled_from(["resident", "naive", "prefetch"]))
def test_offload_of_a_strided_idx_is_the_offload_of_its_copy(B, T, step, mode):
    wide = torch.randint(0, CFG.vocab_size, (B, T * step), generator=torch.Generator().manual_seed(B * 10 + T))
    idx = wide[:, ::step]
    assert torch.equal(_offloaded().forward(idx, mode), _offloaded().forward(idx.contiguous(), mode))
