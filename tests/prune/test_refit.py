"""lab.prune.refit and the refit of `structured_prune` / `prune_structured_by_importance` (calib_tokens, refit=True).

`refit_columns` is checked against `torch.linalg.lstsq` in float64: with λ = 0 it is the least-squares solution,
with λ > 0 the ridge toward the kept weights (an augmented least-squares problem). On a tiny GPT the refit
weights of layer i are the least-squares solution on the inputs that layer sees after layers < i were pruned
and refit (`lab.layerwise.capture_inputs` on a model with only those layers pruned).
"""

from __future__ import annotations

import copy

import pytest
import torch

from lab.layerwise import capture_inputs
from lab.prune import forward_flops, prune_structured_by_importance, refit_columns, structured_prune
from tests.tiny_models import tiny_gpt

KEEP = [0, 2, 3, 7, 8, 11]


def correlated_inputs(n: int = 200, d: int = 12, seed: int = 0) -> torch.Tensor:
    """X (n, d) float64, one token per row, with correlated features (so a refit has something to use)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)


def weight(rows: int = 5, d: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randn(rows, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def residual(X: torch.Tensor, W: torch.Tensor, keep: list[int], V: torch.Tensor) -> float:
    """‖X Wᵀ − X_K Vᵀ‖²_F in float64 (tokens as rows)."""
    return float((X @ W.T - X[:, keep] @ V.detach().double().T).square().sum())


def calib(n: int = 8, T: int = 16, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, 61, (n, T), generator=torch.Generator().manual_seed(seed))


def test_refit_without_damping_is_the_least_squares_minimiser():
    X, W = correlated_inputs(), weight()
    refit = refit_columns(W, X.T @ X, KEEP, percdamp=0.0)
    expected = torch.linalg.lstsq(X[:, KEEP], X @ W.T).solution.T
    torch.testing.assert_close(refit, expected, rtol=1e-9, atol=1e-9)
    assert residual(X, W, KEEP, refit) <= residual(X, W, KEEP, W[:, KEEP])
    assert residual(X, W, KEEP, refit) < 0.9 * residual(X, W, KEEP, W[:, KEEP])


def test_refit_with_damping_is_the_ridge_toward_the_kept_weights():
    X, W = correlated_inputs(), weight()
    G = X.T @ X
    lam = 0.05 * G[KEEP][:, KEEP].diagonal().mean()
    A = torch.cat([X[:, KEEP], lam.sqrt() * torch.eye(len(KEEP), dtype=torch.float64)])
    B = torch.cat([X @ W.T, lam.sqrt() * W[:, KEEP].T])
    expected = torch.linalg.lstsq(A, B).solution.T
    torch.testing.assert_close(refit_columns(W, G, KEEP, percdamp=0.05), expected, rtol=1e-9, atol=1e-9)


def test_refit_keeps_dtype_device_order_and_accepts_a_tensor():
    X, W = correlated_inputs(), weight().float()
    keep = torch.tensor([11, 0, 3])
    refit = refit_columns(W, X.T @ X, keep)
    assert refit.dtype == torch.float32 and refit.shape == (5, 3)
    torch.testing.assert_close(refit, refit_columns(W, X.T @ X, [0, 3, 11]), rtol=0, atol=0)


def test_removing_nothing_returns_the_weights_and_dead_inputs_keep_theirs():
    X, W = correlated_inputs(), weight().float()
    G = X.T @ X
    assert torch.equal(refit_columns(W, G, range(12), percdamp=0.01), W)
    X[:, 5] = 0                                                   # input 5 is zero on every token
    refit = refit_columns(W, X.T @ X, [0, 1, 5, 6], percdamp=0.01)
    assert torch.equal(refit[:, 2], W[:, 5])


@pytest.mark.parametrize("heads", [{0: [0, 1], 1: [1, 3]}, {0: [0, 2]}])   # whole kv groups; one head per group
def test_structured_refit_is_least_squares_on_sequential_inputs(heads):
    dense, ids = tiny_gpt(), calib()
    channels = {0: [0, 5, 47], 1: list(range(10))}
    model = copy.deepcopy(dense)
    report = structured_prune(model, heads=heads, mlp_channels=channels, calib_tokens=ids, percdamp=0.0,
                              batch_size=3)
    D = dense.config.head_dim
    for i in range(2):
        seen = copy.deepcopy(dense)               # layers < i pruned and refit, layer i unpruned
        if i:
            structured_prune(seen, heads={0: heads.get(0, [])}, mlp_channels={0: channels[0]}, calib_tokens=ids,
                             percdamp=0.0)
        readers = {"attn.o_proj": [c for c in range(4 * D) if c // D not in heads.get(i, [])],
                   "mlp.down_proj": [c for c in range(48) if c not in channels[i]]}
        for name, keep in readers.items():
            if len(keep) == seen.layers[i].get_submodule(name).in_features:
                continue                                          # nothing removed: no refit
            X = capture_inputs(seen, f"layers.{i}.{name}", ids).double()
            W = dense.layers[i].get_submodule(name).weight.detach().double()
            got = model.layers[i].get_submodule(name).weight
            torch.testing.assert_close(got.double(), torch.linalg.lstsq(X[:, keep], X @ W.T).solution.T,
                                       rtol=1e-6, atol=1e-7)
            assert residual(X, W, keep, got) <= residual(X, W, keep, W[:, keep])
            errors = report["refit"][f"layers.{i}.{name}"]
            assert errors["error_refit"] <= errors["error_pruned"]
            base = float((X @ W.T).square().sum())
            assert errors["error_refit"] == pytest.approx(residual(X, W, keep, got) / base, rel=1e-3)


def test_structured_refit_of_nothing_changes_nothing():
    model, ids = tiny_gpt(), calib()
    state = copy.deepcopy(model.state_dict())
    report = structured_prune(model, heads={0: []}, mlp_channels={1: []}, calib_tokens=ids)
    assert report["refit"] == {} and report["params_removed"] == 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def test_by_importance_with_refit_removes_the_same_units_and_changes_only_the_readers():
    ids = calib()
    plain, refit = tiny_gpt(), tiny_gpt()
    a = prune_structured_by_importance(plain, ids, head_fraction=0.5, channel_fraction=0.25)
    b = prune_structured_by_importance(refit, ids, head_fraction=0.5, channel_fraction=0.25, refit=True)
    assert (a["heads"], a["mlp_channels"], a["layers"]) == (b["heads"], b["mlp_channels"], b["layers"])
    assert forward_flops(plain, 16) == forward_flops(refit, 16)       # the refit changes values, not shapes
    assert a["refit"] == {} and sorted(b["refit"]) == [f"layers.{i}.{n}" for i in range(2)
                                                        for n in ("attn.o_proj", "mlp.down_proj")]
    readers = {f"layers.{i}.{n}.weight" for i in range(2) for n in ("attn.o_proj", "mlp.down_proj")}
    for key, value in plain.state_dict().items():
        if key in readers:
            assert not torch.equal(value, refit.state_dict()[key])
        else:                                # the kept rows of q/k/v, gate/up, and all else: as without refit
            assert torch.equal(value, refit.state_dict()[key])


@pytest.mark.parametrize("call, error, match", [
    (lambda: refit_columns(weight(), torch.eye(12), [0, 12]), ValueError, r"keep\[1\]=12 is out of range; allowed"),
    (lambda: refit_columns(weight(), torch.eye(12), [1, 1]), ValueError, r"keep must hold distinct column indices"),
    (lambda: refit_columns(weight(), torch.eye(12), []), ValueError, r"keep must hold .*at least one, got \[\]"),
    (lambda: refit_columns(weight(), torch.eye(12), "01"), TypeError, r"keep must be a list of column indices"),
    (lambda: refit_columns(weight(), torch.eye(12), torch.tensor([[0]])), ValueError, r"keep must be a 1-D int64"),
    (lambda: refit_columns(weight(), torch.eye(11), [0]), ValueError, r"gram must have shape .*\(12, 12\)"),
    (lambda: refit_columns(weight(), torch.eye(12), [0], percdamp=-0.1), ValueError, r"percdamp=-0\.1 is out of"),
    (lambda: refit_columns(weight(), torch.zeros(12, 12), [0], percdamp=0.0), ValueError,
     r"gram\[keep\]\[:, keep\] \+ λI is not positive definite with percdamp=0\.0"),
    (lambda: refit_columns(weight()[0], torch.eye(12), [0]), ValueError, r"weight must have 2 dimensions"),
])
def test_refit_columns_rejects_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("kwargs, error, match", [
    ({"calib_tokens": calib() + 61}, ValueError, r"calib_tokens must hold ids in \[0, vocab_size=61\)"),
    ({"calib_tokens": calib().float()}, ValueError, r"calib_tokens must be an int64 tensor"),
    ({"calib_tokens": calib(), "percdamp": -1.0}, ValueError, r"percdamp=-1\.0 is out of range"),
    ({"calib_tokens": calib(), "batch_size": 0}, ValueError, r"batch_size=0 is out of range"),
    ({"calib_tokens": calib(), "progress": "yes"}, TypeError, r"progress must be one of \(False, True\)"),
])
def test_structured_refit_rejects_bad_input_and_changes_nothing(kwargs, error, match):
    model = tiny_gpt()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(error, match=match):
        structured_prune(model, heads={1: [0, 1]}, mlp_channels={0: [3]}, **kwargs)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])
