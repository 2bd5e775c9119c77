"""lab.prune.sequential and lab.prune.structured on small seeded lab GPTs.

References: `torch.nn.utils.prune` (magnitude masks), the reconstruction error computed directly
from captured activations, the unpruned layer 0 run on the calibration batch, and — for
structured pruning — the unpruned model with the removed heads' / channels' output columns zeroed.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils import prune as torch_prune
from torch.utils.flop_counter import FlopCounterMode

from lab.data import tokenize_split
from lab.layerwise import LINEARS
from lab.models import GPT, load_pretrained_lm, load_tokenizer
from lab.models.gpt import rope_cos_sin
from lab.prune.sequential import layer_sensitivity, prune_model, sparsity_of
from lab.prune.structured import (channel_importance, forward_flops, head_importance, prune_structured_by_importance,
                                  speedup_against_bound, structured_prune)
from tests.tiny_models import tiny_gpt

METHODS = ("magnitude", "row_magnitude", "wanda", "sparsegpt")


def calib(n: int = 4, T: int = 16, vocab: int = 61, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (n, T), generator=torch.Generator().manual_seed(seed))


def linears(model: GPT):
    for i, block in enumerate(model.layers):
        for name in LINEARS:
            yield f"layers.{i}.{name}", block.get_submodule(name).weight


# ---------------------------------------------------------------------------------------------
# prune_model
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_prune_model_half_of_every_linear_and_nothing_else(method):
    model = tiny_gpt()
    before = copy.deepcopy(model.state_dict())
    report = prune_model(model, method, 0.5, calib(), progress=False)
    assert set(report) == {name for name, _ in linears(model)}
    for name, w in linears(model):
        zeros = (w == 0)
        if method in ("wanda", "row_magnitude"):   # per-output-row comparison group
            assert zeros.sum(1).tolist() == [w.shape[1] // 2] * w.shape[0], name
        else:
            assert zeros.sum().item() == w.numel() // 2, name
        assert report[name]["sparsity"] == 0.5
        assert 0 < report[name]["error"] < 1
        kept = ~zeros
        if method != "sparsegpt":  # masking only: kept weights unchanged
            assert torch.equal(w[kept], before[f"{name}.weight"][kept])
    for key, value in model.state_dict().items():
        if not any(key == f"{name}.weight" for name, _ in linears(model)):
            assert torch.equal(value, before[key]), key   # embeddings, norms, lm_head untouched
    assert sparsity_of(model) == pytest.approx(0.5)


def test_magnitude_matches_torch_l1_unstructured():
    model, ref = tiny_gpt(), tiny_gpt()
    prune_model(model, "magnitude", 0.3, None, progress=False)
    for (name, w), (_, w_ref) in zip(linears(model), linears(ref)):
        module = ref.get_submodule(name)
        torch_prune.l1_unstructured(module, "weight", amount=0.3)
        torch.testing.assert_close(w, module.weight, rtol=0, atol=0, msg=name)


def test_layer_1_sees_the_output_of_pruned_layer_0():
    model, ids = tiny_gpt(), calib()
    unpruned = copy.deepcopy(model)
    seen = []
    model.layers[1].register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    prune_model(model, "wanda", 0.5, ids, progress=False, batch_size=3)
    seen = torch.cat(seen)[: len(ids)]
    cos, sin = rope_cos_sin(ids.shape[1], model.config.head_dim, model.config.rope_theta)
    with torch.no_grad():
        x0 = model.embed_tokens(ids)
        torch.testing.assert_close(seen, model.layers[0](x0, cos, sin))          # pruned layer 0
        assert not torch.allclose(seen, unpruned.layers[0](x0, cos, sin), atol=1e-4)


def test_reported_error_equals_direct_reconstruction_error():
    model, ids = tiny_gpt(), calib()
    original = copy.deepcopy(model)
    captured = []
    original.layers[0].mlp.down_proj.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    with torch.no_grad():
        original(ids)                            # layer 0's inputs do not depend on any pruning
    X = torch.cat(captured).reshape(-1, 48).double()
    report = prune_model(model, "sparsegpt", 0.5, ids, progress=False)
    W = original.layers[0].mlp.down_proj.weight.double()
    W_hat = model.layers[0].mlp.down_proj.weight.double()
    direct = (X @ W.T - X @ W_hat.T).pow(2).sum() / (X @ W.T).pow(2).sum()
    assert report["layers.0.mlp.down_proj"]["error"] == pytest.approx(direct.item(), rel=1e-6)


def test_error_ordering_on_the_real_lm():
    """The book's LM, 8×64 calibration ids from the train split: per decoder layer (errors summed over its
    seven linears) SparseGPT < Wanda < magnitude, and SparseGPT beats both on every single linear."""
    model = load_pretrained_lm(impl="lab").eval()
    tokens = tokenize_split("train", load_tokenizer())
    starts = torch.randint(0, len(tokens) - 64, (8,), generator=torch.Generator().manual_seed(2))
    ids = torch.stack([tokens[s:s + 64] for s in starts.tolist()])
    reports = {method: prune_model(copy.deepcopy(model), method, 0.5, ids, progress=False) for method in METHODS}
    for name in reports["sparsegpt"]:
        assert reports["sparsegpt"][name]["error"] < min(reports["wanda"][name]["error"],
                                                         reports["magnitude"][name]["error"]), name
    per_layer = {method: [sum(r[f"layers.{i}.{name}"]["error"] for name in LINEARS)
                          for i in range(model.config.n_layer)] for method, r in reports.items()}
    for i in range(model.config.n_layer):
        assert per_layer["sparsegpt"][i] < per_layer["wanda"][i] < per_layer["magnitude"][i], per_layer


@pytest.mark.parametrize("method", METHODS)
def test_two_four_pattern(method):
    model = tiny_gpt()
    report = prune_model(model, method, 0.5, calib(), n=2, m=4, progress=False)
    for name, w in linears(model):
        nonzeros = (w != 0).reshape(w.shape[0], -1, 4).sum(-1)
        assert (nonzeros == 2).all(), name
        assert report[name]["sparsity"] == 0.5


def test_layer_sensitivity_prunes_one_layer_of_a_copy():
    model = tiny_gpt()
    state = copy.deepcopy(model.state_dict())
    probe = calib(2, 16, seed=5)

    def eval_fn(m):
        with torch.no_grad():
            return m(probe).square().mean().item()

    scores = layer_sensitivity(model, None, "magnitude", 0.5, eval_fn, progress=False)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])
    for i in range(2):
        ref = copy.deepcopy(model)
        for name in LINEARS:
            torch_prune.l1_unstructured(ref.layers[i].get_submodule(name), "weight", amount=0.5)
        assert scores[i] == pytest.approx(eval_fn(ref), rel=1e-6)
    assert scores[0] != scores[1]


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "obd"},
     r"method='obd' is not allowed; use one of \('magnitude', 'row_magnitude', 'wanda', 'sparsegpt'\)"),
    ({"sparsity": 1.0}, r"sparsity=1.0 is out of range; allowed: a finite number in \[0.0, 1.0\)"),
    ({"sparsity": -0.1}, r"sparsity=-0.1 is out of range; allowed: a finite number in \[0.0, 1.0\)"),
    ({"calib_tokens": torch.zeros(16, dtype=torch.int64)}, (r"calib_tokens must be .*\(n_samples, seq_len\), "
                                                           r"got shape \(16,\)")),
    ({"calib_tokens": torch.zeros(2, 16)}, r"calib_tokens must be an int64 .*torch.float32"),
    ({"calib_tokens": torch.zeros(2, 17, dtype=torch.int64)}, r"seq_len=17 exceeds context_length=16"),
    ({"method": "wanda", "calib_tokens": None}, r"method='wanda' needs calib_tokens"),
    ({"n": 2}, r"n and m must be given together"),
    ({"n": 1, "m": 4}, r"sparsity=0.5 disagrees with n=1, m=4"),
    ({"layers": [2]}, r"layers must be indices in \[0, 2\)"),
])
def test_prune_model_rejects_bad_input(kwargs, match):
    args = {"method": "sparsegpt", "sparsity": 0.5, "calib_tokens": calib(), "progress": False}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        prune_model(tiny_gpt(), **args)


# ---------------------------------------------------------------------------------------------
# structured pruning
# ---------------------------------------------------------------------------------------------

def zeroed_reference(model: GPT, heads: dict, channels: dict) -> GPT:
    """The unpruned model with removed heads' W_o columns and removed channels' W_down columns zeroed."""
    ref = copy.deepcopy(model)
    D = model.config.head_dim
    with torch.no_grad():
        for i, hs in heads.items():
            for h in hs:
                ref.layers[i].attn.o_proj.weight[:, h * D:(h + 1) * D] = 0
        for i, cs in channels.items():
            ref.layers[i].mlp.down_proj.weight[:, cs] = 0
    return ref


@pytest.mark.parametrize("heads, removed_kv", [
    ({0: [0, 1], 1: [2, 3]}, {0: 1, 1: 1}),        # whole kv groups: kv heads go too
    ({0: [0, 2]}, {0: 0}),                          # one query head from every group: kv heads stay
    ({1: [1, 3]}, {1: 0}),
])
def test_structured_prune_equals_zeroed_reference_and_closed_form(heads, removed_kv):
    model, ids = tiny_gpt(n_layer=2), calib()
    channels = {0: [0, 5, 47], 1: list(range(10))}
    ref = zeroed_reference(model, heads, channels)
    report = structured_prune(model, heads=heads, mlp_channels=channels)
    C, D = 32, model.config.head_dim
    expected = (2 * C * D * sum(len(h) for h in heads.values()) + 2 * C * D * sum(removed_kv.values())
                + 3 * C * sum(len(c) for c in channels.values()))
    assert report["params_removed"] == expected
    assert report["params_before"] - report["params_after"] == expected
    assert model.num_parameters() == report["params_after"]
    for i, block in enumerate(model.layers):
        assert block.attn.q_proj.weight.shape == (D * (4 - len(heads.get(i, []))), C)
        assert block.attn.k_proj.weight.shape == (D * (2 - removed_kv.get(i, 0)), C)
        assert block.mlp.down_proj.weight.shape == (C, 48 - len(channels.get(i, [])))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), ref(ids), rtol=1e-5, atol=1e-5)


def test_structured_prune_mha_any_heads_and_twice():
    model, ids = tiny_gpt(n_kv_head=4), calib()
    ref = zeroed_reference(model, {0: [1], 1: [0, 2, 3]}, {})
    structured_prune(model, heads={0: [1]})
    structured_prune(model, heads={1: [0, 2, 3]})   # indices of the current heads
    assert model.layers[1].attn.q_proj.out_features == 8
    with torch.no_grad():
        torch.testing.assert_close(model(ids), ref(ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"heads": {0: [4]}}, ValueError, r"heads\[0\]\[0\]=4 is out of range; allowed: \[0, 3\]"),
    ({"heads": {0: [0, 1, 2, 3]}}, ValueError, r"heads\[0\] removes all 4 of layer 0"),
    ({"heads": {0: [0]}}, ValueError, r"heads\[0\]=\[0\] leaves kv groups with unequal query heads \[1, 2\]"),
    ({"heads": {0: [1, 1]}}, ValueError, r"heads\[0\] has repeated indices"),
    ({"heads": {5: [0]}}, ValueError, r"layer index of heads=5 is out of range; allowed: \[0, 1\]"),
    ({"mlp_channels": {1: list(range(48))}}, ValueError, r"mlp_channels\[1\] removes all 48 of layer 1"),
    ({"mlp_channels": {1: [-1]}}, ValueError, r"mlp_channels\[1\]\[0\]=-1 is out of range; allowed: \[0, 47\]"),
    ({"mlp_channels": {1: [3, 2.0]}}, TypeError, r"mlp_channels\[1\]\[1\] must be an int, got 2.0"),
])
def test_structured_prune_rejects_bad_input_and_changes_nothing(kwargs, error, match):
    model = tiny_gpt()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(error, match=match):
        structured_prune(model, heads={1: [0, 1]} | kwargs.get("heads", {}), mlp_channels=kwargs.get("mlp_channels"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def test_importance_scores_are_output_contribution_norms():
    model, ids = tiny_gpt(), calib()
    inputs, handles = {}, []
    for i, block in enumerate(model.layers):
        handles.append(block.attn.o_proj.register_forward_pre_hook(
            lambda m, a, i=i: inputs.__setitem__(("o", i), a[0])))
        handles.append(block.mlp.down_proj.register_forward_pre_hook(
            lambda m, a, i=i: inputs.__setitem__(("d", i), a[0])))
    with torch.no_grad():
        model(ids)
    for handle in handles:
        handle.remove()
    heads, channels = head_importance(model, ids, batch_size=3), channel_importance(model, ids, batch_size=3)
    D = model.config.head_dim
    for i, block in enumerate(model.layers):
        Y, W_o = inputs[("o", i)].double(), block.attn.o_proj.weight.double()
        ref = [(Y[..., h * D:(h + 1) * D] @ W_o[:, h * D:(h + 1) * D].T).norm() for h in range(4)]
        torch.testing.assert_close(heads[i], torch.stack(ref), rtol=1e-9, atol=0)
        A, W_d = inputs[("d", i)].double(), block.mlp.down_proj.weight.double()
        ref = [(A[..., c:c + 1] @ W_d[:, c:c + 1].T).norm() for c in range(48)]
        torch.testing.assert_close(channels[i], torch.stack(ref), rtol=1e-9, atol=0)


def test_prune_structured_by_importance_removes_the_weakest_group_and_channels():
    model, ids = tiny_gpt(), calib()
    heads, channels = head_importance(model, ids), channel_importance(model, ids)
    report = prune_structured_by_importance(model, ids, head_fraction=0.5, channel_fraction=0.25)
    for i in range(2):
        weakest_group = heads[i].pow(2).view(2, 2).sum(1).argmin().item()
        assert report["heads"][i] == [2 * weakest_group, 2 * weakest_group + 1]
        assert report["mlp_channels"][i] == sorted(channels[i].argsort()[:12].tolist())
        assert report["layers"][i] == {"n_head": 2, "n_kv_head": 1, "d_ff": 36}
    assert report["params_removed"] == 2 * (2 * 32 * 8 * 2 + 2 * 32 * 8 + 3 * 32 * 12)
    with pytest.raises(ValueError, match=r"head_fraction=1 is out of range; allowed: a finite number in \[0.0, 1.0\)"):
        prune_structured_by_importance(model, ids, head_fraction=1, channel_fraction=0.0)


def counted_flops(model: GPT, ids: torch.Tensor) -> int:
    """FLOPs torch's own counter sees in one forward, attention through the math backend (two bmm)."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(ids)
    return counter.get_total_flops()


def test_forward_flops_equals_torch_flop_counter_before_and_after_structured_pruning():
    model, ids = tiny_gpt(), calib(n=1, T=16)
    dense = forward_flops(model, 16)
    assert dense == counted_flops(model, ids)
    structured_prune(model, heads={0: [0, 1], 1: [1, 3]}, mlp_channels={0: list(range(12))})
    assert forward_flops(model, 16) == counted_flops(model, ids) < dense
    with pytest.raises(ValueError, match=r"seq_len=0 is out of range"):
        forward_flops(model, 0)


@pytest.mark.parametrize("low, high, verb", [
    (1.30, 1.40, "higher"), (1.00, 1.10, "lower"), (1.15, 1.25, "inconclusive"), (1.199, 1.201, "equivalent")])
def test_speedup_against_bound_judges_the_interval_of_the_ratio(low, high, verb):
    assert speedup_against_bound({"ratio": (low + high) / 2, "ci_low": low, "ci_high": high}, 1.2) == verb


def test_speedup_against_bound_rejects_bad_input():
    with pytest.raises(ValueError, match=r"bound=0.0 is out of range"):
        speedup_against_bound({"ci_low": 1.0, "ci_high": 1.1}, 0.0)
    with pytest.raises(ValueError, match=r"speedup must be a lab.core.stats.paired_ratio result"):
        speedup_against_bound({"ci_low": 1.2, "ci_high": 1.1}, 1.2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_matches_cpu(method):
    cpu, gpu, ids = tiny_gpt(), tiny_gpt().cuda(), calib()
    report_cpu = prune_model(cpu, method, 0.5, ids, progress=False)
    report_gpu = prune_model(gpu, method, 0.5, ids, progress=False)
    for name in report_cpu:
        assert report_gpu[name]["sparsity"] == 0.5
        assert report_gpu[name]["error"] == pytest.approx(report_cpu[name]["error"], rel=1e-2, abs=1e-4)
    ref = zeroed_reference(gpu, {0: [0, 1]}, {1: [3, 4]})
    structured_prune(gpu, heads={0: [0, 1]}, mlp_channels={1: [3, 4]})
    with torch.no_grad():
        torch.testing.assert_close(gpu(ids.cuda()), ref(ids.cuda()), rtol=1e-4, atol=1e-4)
def test_layer_errors_orders_the_methods_on_correlated_inputs():
    """On inputs with strongly correlated, unequally scaled features, SparseGPT's error is the
    smallest; each value equals reconstruction_error / ||WX||² computed directly."""
    from lab.prune import layer_errors, magnitude_mask, reconstruction_error

    g = torch.Generator().manual_seed(0)
    W = torch.randn(16, 32, generator=g, dtype=torch.float64)
    mix = torch.randn(32, 32, generator=g, dtype=torch.float64) * torch.logspace(0, 1, 32, dtype=torch.float64)
    X = mix @ torch.randn(32, 256, generator=g, dtype=torch.float64)
    errors = layer_errors(W, X, 0.5)
    assert errors["sparsegpt"] < min(errors["magnitude"], errors["wanda"])
    direct = reconstruction_error(W, W * magnitude_mask(W, 0.5), X) / (W @ X).pow(2).sum().item()
    assert errors["magnitude"] == pytest.approx(direct, rel=1e-12)


def test_layer_errors_nm_patterns_against_direct_references():
    """n:m in layer_errors: magnitude equals keeping the n largest |w| of each group of m (numpy
    argsort, error from the captured product); Wanda with one group per row (m = d_in) equals its
    unstructured per-row mask; SparseGPT stays below magnitude; mismatched arguments raise."""
    import numpy as np

    from lab.prune import layer_errors

    g = torch.Generator().manual_seed(0)
    W = torch.randn(12, 32, generator=g, dtype=torch.float64)
    mix = torch.randn(32, 32, generator=g, dtype=torch.float64) * torch.logspace(0, 1, 32, dtype=torch.float64)
    X = mix @ torch.randn(32, 256, generator=g, dtype=torch.float64)
    base = float(((W @ X) ** 2).sum())
    for n, m in ((1, 2), (2, 4), (4, 8)):
        errors = layer_errors(W, X, 1 - n / m, n=n, m=m)
        w = W.numpy().reshape(-1, m)
        keep = np.zeros_like(w, dtype=bool)
        np.put_along_axis(keep, np.argsort(-np.abs(w), axis=1, kind="stable")[:, :n], True, axis=1)
        W_hat = torch.from_numpy(np.where(keep, w, 0.0).reshape(W.shape))
        direct = float((((W - W_hat) @ X) ** 2).sum()) / base
        assert errors["magnitude"] == pytest.approx(direct, rel=1e-12)
        assert errors["sparsegpt"] < errors["magnitude"]
    one_group = layer_errors(W, X, 0.5, n=16, m=32)
    assert one_group["wanda"] == pytest.approx(layer_errors(W, X, 0.5)["wanda"], rel=1e-12)
    with pytest.raises(ValueError, match="sparsity"):
        layer_errors(W, X, 0.3, n=2, m=4)
    with pytest.raises(ValueError, match="together"):
        layer_errors(W, X, 0.5, n=2)
    with pytest.raises(ValueError, match="m"):
        layer_errors(W, X, 0.5, n=3, m=6)   # 6 does not divide d_in = 32


def test_row_magnitude_keeps_the_largest_weights_of_each_row():
    """row_magnitude: |W_ij| compared within row i (Wanda's group without its activation norms)."""
    model = tiny_gpt()
    before = {name: w.detach().clone() for name, w in linears(model)}
    prune_model(model, "row_magnitude", 0.5, None, progress=False)
    for name, w in linears(model):
        kept = w != 0
        dropped_max = before[name].abs().masked_fill(kept, 0).amax(1)
        kept_min = before[name].abs().masked_fill(~kept, float("inf")).amin(1)
        assert (dropped_max <= kept_min).all(), name
