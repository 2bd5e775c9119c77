"""lab.params.checkpointing's segments (Chen et al. 2016): exact gradients, the recompute counted, the peak measured
against `segment_checkpoint_bytes`, and bad input refused by name."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lab.models.gpt import Block
from lab.params.checkpointing import (CheckpointedBlock, SegmentMember, SegmentStart, _torch_checkpointed,
                                      checkpoint_layers, checkpoint_segments, measure_activation_peak_cpu,
                                      optimal_segments, segment_checkpoint_bytes, segment_gradient_error,
                                      segment_time_ratio)
from lab.params.memory import activation_bytes
from lab.params.sharing import share_layers
from tests.bad_input import NOT_GPT

N_LAYER = 6   # k = 4 and 5 do not divide it
B, T = 2, 16


def _grads(model, forward, autocast: bool = False) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, model.config.vocab_size, (B, T), generator=gen)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = forward(model, idx)
    F.cross_entropy(logits.float().flatten(0, 1), idx.flatten()).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _sizes(model) -> list[int]:
    """The segment sizes as the blocks' classes show them."""
    sizes = []
    for block in model.layers:
        if isinstance(block, SegmentStart):
            assert block.segment[0] is block
            sizes.append(len(block.segment))
        else:
            assert isinstance(block, SegmentMember)
    return sizes


@pytest.mark.parametrize("k, sizes", [(1, [6]), (2, [3, 3]), (4, [2, 2, 1, 1]), (5, [2, 1, 1, 1, 1]),
                                      (6, [1] * 6)])
def test_float64_gradients_equal_the_plain_model_and_torch_checkpoint(tiny_gpt, k, sizes):
    plain = tiny_gpt(n_layer=N_LAYER).double()
    segmented = checkpoint_segments(copy.deepcopy(plain), k)
    assert _sizes(segmented) == sizes
    grads, reference = _grads(segmented, nn.Module.__call__), _grads(plain, nn.Module.__call__)
    for name in reference:
        torch.testing.assert_close(grads[name], reference[name], rtol=0, atol=1e-13, msg=name)
    error = segment_gradient_error(plain, k, B, T)
    assert error.keys() == {"plain", "torch"} and max(error.values()) <= 1e-13, error


def test_bf16_autocast_recomputes_in_the_same_precision(tiny_gpt):
    plain = tiny_gpt(n_layer=N_LAYER)
    grads = _grads(checkpoint_segments(copy.deepcopy(plain), 4), nn.Module.__call__, autocast=True)
    by_torch = _grads(plain, _torch_checkpointed([range(0, 2), range(2, 4), range(4, 5), range(5, 6)]), autocast=True)
    for name, g in by_torch.items():
        torch.testing.assert_close(grads[name], g, rtol=0, atol=1e-6, msg=name)


def test_segment_gradient_error_sees_a_wrong_recompute(tiny_gpt, monkeypatch):
    forward = SegmentStart.forward
    monkeypatch.setattr(SegmentStart, "forward", lambda self, x, cos, sin: 1.001 * forward(self, x, cos, sin))
    error = segment_gradient_error(tiny_gpt(n_layer=N_LAYER).double(), 3, B, T)
    assert error["plain"] > 1e-5 and error["torch"] > 1e-5, error


def test_in_place_same_outputs_state_dict_and_undo(tiny_gpt):
    model = tiny_gpt(n_layer=N_LAYER)
    idx = torch.randint(0, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(2))
    keys, logits = list(model.state_dict()), model(idx)
    assert checkpoint_segments(model, 2) is model and list(model.state_dict()) == keys
    torch.testing.assert_close(model(idx), logits, rtol=0, atol=0)
    assert _sizes(checkpoint_segments(model, 3)) == [2, 2, 2]   # a second call replaces the first
    checkpoint_layers(model, 2)                                  # so does per-layer checkpointing
    assert [type(b) for b in model.layers] == [CheckpointedBlock, Block] * 3
    assert not any("segment" in vars(b) for b in model.layers)
    checkpoint_segments(checkpoint_segments(model, 6), None)
    assert all(type(b) is Block for b in model.layers)


# ---------------------------------------------------------------- the recompute counted, the peak measured
def _a_and_m(cfg) -> tuple[int, int]:
    """a: one stored layer input, 4·BTC; m: one layer's saved set (`activation_bytes`' "per layer"), fp32."""
    a = 4 * B * T * cfg.d_model
    per_layer_less_input = (activation_bytes(cfg, B, T) - activation_bytes(cfg, B, T, "fp32", 1)) // cfg.n_layer
    return a, per_layer_less_input + a


def test_block_forwards_counted_exactly(tiny_gpt):
    model = tiny_gpt(n_layer=N_LAYER)
    assert measure_activation_peak_cpu(model, B, T)["block_forwards"] == N_LAYER
    for k in range(1, N_LAYER + 1):   # every layer recomputed once: one extra forward pass for every k
        segmented = checkpoint_segments(copy.deepcopy(model), k)
        assert measure_activation_peak_cpu(segmented, B, T)["block_forwards"] == 2 * N_LAYER
    for every, checkpointed in ((1, 6), (2, 3), (4, 2)):
        layered = checkpoint_layers(copy.deepcopy(model), every)
        assert measure_activation_peak_cpu(layered, B, T)["block_forwards"] == N_LAYER + checkpointed
    assert all(type(b) is Block for b in model.layers) and all(p.grad is None for p in model.parameters())


def test_measured_peak_is_the_formula_less_one_input_plus_ids_and_rope(tiny_gpt):
    model = tiny_gpt(n_layer=N_LAYER)
    cfg = model.config
    a, m = _a_and_m(cfg)
    plain = measure_activation_peak_cpu(model, B, T)
    # the forward's count, as measure_training_memory_cpu's; here the targets are the ids themselves (8·BT once)
    assert plain["saved"] == plain["peak"] == activation_bytes(cfg, B, T) - 8 * B * T
    ids_and_rope = 8 * B * T + 2 * 4 * T * cfg.head_dim
    saved = {}
    for k in range(1, N_LAYER + 1):
        step = measure_activation_peak_cpu(checkpoint_segments(copy.deepcopy(model), k), B, T)
        assert step["peak"] == segment_checkpoint_bytes(N_LAYER, k, a, m) - a + ids_and_rope, k
        saved[k] = step["saved"]
    assert all(saved[k] - saved[1] == (k - 1) * a for k in saved)   # k stored inputs after the forward
    assert measure_activation_peak_cpu(checkpoint_layers(copy.deepcopy(model), 1), B, T)["peak"] == (
        segment_checkpoint_bytes(N_LAYER, N_LAYER, a, m) - a + ids_and_rope)   # k = L is per-layer checkpointing


def test_segment_time_ratio_is_a_finite_positive_float(tiny_gpt):
    model = tiny_gpt(n_layer=2)
    ratio = segment_time_ratio(model, 1, 8, 1, repeats=1)
    assert isinstance(ratio, float) and math.isfinite(ratio) and ratio > 0   # never a timing assertion
    assert all(type(b) is Block for b in model.layers)


# ---------------------------------------------------------------- the formula and its optimum
def test_formula_is_chens_for_equal_segments_and_the_layout_otherwise():
    for L, k in ((24, 1), (24, 4), (24, 6), (24, 24), (9, 3)):
        assert segment_checkpoint_bytes(L, k, 7, 100) == k * 7 + (L // k) * 100
    assert segment_checkpoint_bytes(24, 5, 1, 21) == max(j + 1 + n * 21 for j, n in enumerate([5, 5, 5, 5, 4]))
    assert segment_checkpoint_bytes(24, 5, 1, 21) == 109 < 5 * 1 + 5 * 21   # below Chen's ⌈L/k⌉ bound


@pytest.mark.parametrize("L, a, m", [(24, 1, 21), (16, 5, 5), (9, 1, 1), (30, 3, 1), (8, 1, 100), (1, 4, 4)])
def test_optimum_is_the_least_formula(L, a, m):
    k = optimal_segments(L, a, m)
    costs = [segment_checkpoint_bytes(L, j, a, m) for j in range(1, L + 1)]
    assert segment_checkpoint_bytes(L, k, a, m) == min(costs) and costs.index(min(costs)) == k - 1


def test_per_layer_beats_sqrt_l_for_a_decoder_layer_and_sqrt_l_is_optimal_when_a_equals_m():
    assert optimal_segments(24, 1, 21) == 22 and segment_checkpoint_bytes(24, 22, 1, 21) == 44
    assert segment_checkpoint_bytes(24, 24, 1, 21) == 45 < segment_checkpoint_bytes(24, 5, 1, 21) == 109
    assert optimal_segments(8, 1, 100) == 8   # m ≥ L·a: per-layer checkpointing
    for L in (9, 16, 25):   # the paper's setting: √L segments cost 2√L, the least
        assert segment_checkpoint_bytes(L, math.isqrt(L), 1, 1) == 2 * math.isqrt(L) == min(
            segment_checkpoint_bytes(L, k, 1, 1) for k in range(1, L + 1))


# ---------------------------------------------------------------- bad input
def test_bad_segments_raise_with_the_argument_its_value_and_what_is_allowed(tiny_gpt):
    model = tiny_gpt(n_layer=N_LAYER)
    for segments in (0, -1, 7):
        with pytest.raises(ValueError, match=rf"segments={segments} is out of range; allowed: \[1, 6\]"):
            checkpoint_segments(model, segments)
    for segments, kind in ((True, "bool"), (2.0, "float"), ("2", "str")):
        with pytest.raises(TypeError, match=rf"segments must be an int, got {segments!r} \({kind}\)"):
            checkpoint_segments(model, segments)
    with pytest.raises(TypeError, match=rf"model {NOT_GPT}, got Linear"):
        checkpoint_segments(nn.Linear(2, 2), 1)
    with pytest.raises(ValueError, match="segments=2 is not allowed for this model: layer 1 shares its block with "
                                         "layer 0"):
        checkpoint_segments(share_layers(tiny_gpt(n_layer=4), n_groups=2), 2)
    assert all(type(b) is Block for b in model.layers)   # nothing was changed by a refused call


def test_bad_formula_and_measurement_arguments(tiny_gpt):
    with pytest.raises(ValueError, match=r"segments=25 is out of range; allowed: \[1, 24\]"):
        segment_checkpoint_bytes(24, 25, 1, 1)
    with pytest.raises(TypeError, match=r"segments must be an int, got 1\.5 \(float\)"):
        segment_checkpoint_bytes(24, 1.5, 1, 1)
    with pytest.raises(ValueError, match=r"a=-1 is out of range; allowed: \[0, inf\)"):
        optimal_segments(24, -1, 1)
    with pytest.raises(TypeError, match=r"n_layer must be an int, got True \(bool\)"):
        optimal_segments(True, 1, 1)
    with pytest.raises(ValueError, match=r"batch=0 is out of range; allowed: \[1, inf\)"):
        measure_activation_peak_cpu(tiny_gpt(), 0, 4)
    with pytest.raises(ValueError, match="model has no parameter with requires_grad=True"):
        measure_activation_peak_cpu(tiny_gpt().requires_grad_(False), 1, 4)
    with pytest.raises(ValueError, match=r"segments=3 is out of range; allowed: \[1, 2\]"):
        segment_gradient_error(tiny_gpt(), 3, 1, 4)
    with pytest.raises(TypeError, match=r"repeats must be an int, got None \(NoneType\)"):
        segment_time_ratio(tiny_gpt(), 1, 4, 1, repeats=None)
