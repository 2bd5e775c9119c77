"""lab.prune masks, OBS and SparseGPT against torch.nn.utils.prune, closed forms and brute-force float64 OBS."""

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from lab.prune import (keep_top_fraction, layer_hessian, magnitude_mask, nm_mask, obs_prune_row_bruteforce,
                       obs_saliency, obs_update, reconstruction_error, sparsegpt_prune, wanda_mask)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _calibration(d: int, n_samples: int, seed: int) -> torch.Tensor:
    """LLM-like inputs X (d, N): correlated features (random mixing of a few latent factors plus noise),
    very different scales per feature and a few outlier features, as in transformer activations."""
    g = _gen(seed)
    latent = torch.randn(d // 4, n_samples, generator=g, dtype=torch.float64)
    mix = torch.randn(d, d // 4, generator=g, dtype=torch.float64)
    X = mix @ latent + 0.3 * torch.randn(d, n_samples, generator=g, dtype=torch.float64)
    scale = torch.exp(torch.randn(d, 1, generator=g, dtype=torch.float64))
    scale[torch.randperm(d, generator=g)[:3]] *= 20.0  # outlier features
    return X * scale


# ---------------------------------------------------------------- masks


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (3, 4), (4, 8), (4, 4)])
def test_nm_mask_exactly_n_per_group_and_largest_kept(n, m):
    W = torch.randn(6, 32, generator=_gen(0))
    mask = nm_mask(W, n, m)
    assert mask.dtype == torch.bool and mask.shape == W.shape
    groups, kept = W.abs().reshape(-1, m), mask.reshape(-1, m)
    assert (kept.sum(1) == n).all()
    for g, k in zip(groups, kept):
        if n < m:
            assert g[k].min() > g[~k].max()


def test_nm_mask_ties_prune_lower_index_first():
    W = torch.ones(2, 8)
    expected = torch.tensor([False, False, True, True] * 2).expand(2, 8)
    assert torch.equal(nm_mask(W, 2, 4), expected)


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.25, 1 / 3, 0.5, 0.7, 0.95])
def test_magnitude_mask_matches_torch_l1_unstructured(sparsity):
    layer = nn.Linear(48, 32, bias=False)
    with torch.no_grad():  # distinct magnitudes, where the two definitions coincide
        layer.weight.copy_(torch.randperm(32 * 48, generator=_gen(1)).reshape(32, 48).float() + 1.0)
        layer.weight.mul_(torch.where(torch.rand(32, 48, generator=_gen(2)) < 0.5, -1.0, 1.0))
    mask = magnitude_mask(layer.weight.detach(), sparsity)
    torch_prune.l1_unstructured(layer, "weight", amount=sparsity)
    assert torch.equal(mask, layer.weight_mask.bool())
    assert int((~mask).sum()) == round(sparsity * 32 * 48)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.6])
def test_wanda_with_unit_norms_is_per_row_magnitude(sparsity):
    W = torch.randn(9, 20, generator=_gen(3))
    mask = wanda_mask(W, torch.ones(20), sparsity)
    ref = torch.stack([torch_prune.L1Unstructured(amount=sparsity).compute_mask(row, torch.ones_like(row))
                       for row in W]).bool()
    assert torch.equal(mask, ref)
    assert ((~mask).sum(1) == round(sparsity * 20)).all()
    assert torch.equal(wanda_mask(W, torch.ones(20), 0.5, n=2, m=4), nm_mask(W, 2, 4))


def test_wanda_score_is_weight_times_activation_norm():
    W = torch.randn(5, 16, generator=_gen(4))
    act_norm = torch.rand(16, generator=_gen(5)) * 10
    # a per-row magnitude mask of W·diag(act_norm) (torch reference), invariant to scaling the norms
    scaled = W * act_norm
    ref = torch.stack([torch_prune.L1Unstructured(amount=0.5).compute_mask(row, torch.ones_like(row))
                       for row in scaled]).bool()
    assert torch.equal(wanda_mask(W, act_norm, 0.5), ref)
    assert torch.equal(wanda_mask(W, act_norm * 7.0, 0.5), ref)
    assert torch.equal(wanda_mask(W, act_norm, 0.5, 2, 4), nm_mask(scaled, 2, 4))
    # an input feature with huge activations protects its small weights, unlike magnitude pruning
    W_small = W.clone()
    W_small[:, 3] = 1e-3
    boost = torch.ones(16)
    boost[3] = 1e6
    assert wanda_mask(W_small, boost, 0.5)[:, 3].all() and not magnitude_mask(W_small, 0.5)[:, 3].any()


@pytest.mark.parametrize("shape", [(7, 13), (3, 8), (1, 5)])
@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.77])
def test_sparsity_reached_exactly(shape, sparsity):
    rows, d = shape
    W = torch.randn(*shape, generator=_gen(6))
    assert int((~magnitude_mask(W, sparsity)).sum()) == round(sparsity * rows * d)
    assert ((~wanda_mask(W, torch.rand(d, generator=_gen(7)), sparsity)).sum(1) == round(sparsity * d)).all()
    assert ((~keep_top_fraction(W, sparsity, per_row=True)).sum(1) == round(sparsity * d)).all()
    H = layer_hessian(_calibration(d, 64, 8))
    for blocksize in (1, 3, 128):
        W_hat, mask = sparsegpt_prune(W, H, sparsity, blocksize=blocksize)
        assert int((~mask).sum()) == round(sparsity * rows * d)
        assert (W_hat[~mask] == 0).all()


# ---------------------------------------------------------------- OBS


def test_hessian_and_reconstruction_error_closed_forms():
    X = _calibration(12, 50, 9)
    H = layer_hessian(X)
    torch.testing.assert_close(H, 2 * torch.einsum("in,jn->ij", X, X) / 50, rtol=1e-12, atol=0)
    W, W_hat = torch.randn(3, 12, generator=_gen(10)), torch.randn(3, 12, generator=_gen(11))
    D = W.double() - W_hat.double()
    # ||W X − Ŵ X||² = (N/2) · tr(D H Dᵀ)
    assert math.isclose(reconstruction_error(W, W_hat, X), 25 * float(torch.trace(D @ H @ D.T)), rel_tol=1e-10)


def test_obs_single_removal_is_the_constrained_least_squares_optimum():
    X = _calibration(10, 80, 12)
    H = layer_hessian(X)
    w = torch.randn(10, generator=_gen(13), dtype=torch.float64)
    H_inv = torch.linalg.inv(H)
    for q in (0, 4, 9):
        delta = obs_update(w, H_inv, q)
        assert delta[q] == pytest.approx(-w[q].item(), rel=1e-12)
        # independent reference: least squares of w X on the other inputs
        others = [j for j in range(10) if j != q]
        sol = torch.linalg.lstsq(X[others].T, (w @ X)[:, None]).solution[:, 0]
        torch.testing.assert_close((w + delta)[others], sol, rtol=1e-8, atol=1e-10)
        # the error increase is (N/2) · saliency
        err = reconstruction_error(w[None], (w + delta)[None], X)
        assert err == pytest.approx(40 * obs_saliency(w, H_inv)[q].item(), rel=1e-9)


def test_obs_bruteforce_result_is_least_squares_on_the_kept_set():
    X = _calibration(12, 100, 14)
    H = layer_hessian(X)
    w = torch.randn(12, generator=_gen(15), dtype=torch.float64)
    w_hat, removed = obs_prune_row_bruteforce(w, H, 5)
    assert len(set(removed.tolist())) == 5 and (w_hat[removed] == 0).all()
    kept = [j for j in range(12) if j not in set(removed.tolist())]
    sol = torch.linalg.lstsq(X[kept].T, (w @ X)[:, None]).solution[:, 0]
    torch.testing.assert_close(w_hat[kept], sol, rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------- SparseGPT


def _sparsegpt_reference(W, H, sparsity, blocksize):
    """SparseGPT written as plain sequential OBS with explicit inverses, one weight at a time.

    SparseGPT visits columns left to right and freezes each after its visit, so when column j is visited the
    free weights of each row are the columns j..d−1, with inverse Hessian (H[j:, j:])⁻¹ (inverted here with
    ``torch.linalg.inv``, no Cholesky, no lazy updates). A weight w_j pruned at this point gets the OBS update
    δ = −w_j/[H_F⁻¹]_00 · H_F⁻¹[:, 0] on the free columns; a kept one is frozen unchanged. Selection: at the
    start of each block of ``blocksize`` columns, among rows × block columns, the round(s·rows·i2) −
    round(s·rows·i1) smallest OBS saliencies w_j²/[H_{F_j}⁻¹]_00 (ties by row-major index) are pruned.
    """
    W = W.double().clone()
    rows, d = W.shape
    H_inv = [torch.linalg.inv(H[j:, j:]) for j in range(d)]
    keep = torch.ones(rows, d, dtype=torch.bool)
    for i1 in range(0, d, blocksize):
        i2 = min(i1 + blocksize, d)
        n_prune = round(sparsity * rows * i2) - round(sparsity * rows * i1)
        candidates = sorted((obs_saliency(W[r, j], H_inv[j][:1, :1]).item(), r * d + j)
                            for r in range(rows) for j in range(i1, i2))
        for _, flat in candidates[:n_prune]:
            keep[flat // d, flat % d] = False
        for j in range(i1, i2):
            for r in range(rows):
                if not keep[r, j]:
                    W[r, j:] += obs_update(W[r, j:], H_inv[j], 0)
                    W[r, j] = 0.0
    return W, keep


@pytest.mark.parametrize("blocksize", [1, 4, 16])
@pytest.mark.parametrize("percdamp", [0.0, 0.01])
def test_sparsegpt_equals_sequential_obs_with_explicit_inverses(blocksize, percdamp):
    """Same kept set and same weights as sequential OBS over a frozen prefix (see _sparsegpt_reference):
    checks U = chol(H⁻¹) rows = the successive OBS inverses, the lazy block updates and the selection."""
    rows, d = 4, 12
    X = _calibration(d, 200, 16)
    W = torch.randn(rows, d, generator=_gen(17), dtype=torch.float64)
    H = layer_hessian(X)
    W_hat, mask = sparsegpt_prune(W, H, 0.5, blocksize=blocksize, percdamp=percdamp)
    H_damped = H + percdamp * H.diagonal().mean() * torch.eye(d, dtype=torch.float64)
    W_ref, keep_ref = _sparsegpt_reference(W, H_damped, 0.5, blocksize)
    assert torch.equal(mask, keep_ref)
    torch.testing.assert_close(W_hat, W_ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("blocksize", [1, 16])
def test_sparsegpt_with_bruteforce_obs_mask_reproduces_greedy_obs(blocksize):
    """Greedy OBS (brute force) picks k weights of a row and re-optimises all the others. SparseGPT only
    updates columns to the right of the one it prunes, so with the OBS-chosen set moved to the front (a column
    permutation, in OBS's removal order) and given as a fixed mask, its free set at every removal is exactly
    OBS's remaining set: the two must agree weight for weight. Rows are done one at a time since each row has
    its own OBS set."""
    d, k = 10, 6
    X = _calibration(d, 120, 18)
    H = layer_hessian(X)
    W = torch.randn(3, d, generator=_gen(19), dtype=torch.float64)
    for w in W:
        w_obs, removed = obs_prune_row_bruteforce(w, H, k)
        perm = removed.tolist() + [j for j in range(d) if j not in set(removed.tolist())]
        perm = torch.tensor(perm)
        fixed = torch.arange(d)[None, :] >= k  # the first k (permuted) columns are pruned
        w_sgpt, mask = sparsegpt_prune(w[perm][None], H[perm][:, perm], k / d, blocksize=blocksize,
                                       percdamp=0.0, mask=fixed)
        assert torch.equal(mask, fixed)
        torch.testing.assert_close(w_sgpt[0, torch.argsort(perm)], w_obs, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_sparsegpt_reconstruction_error_below_wanda_and_magnitude(nm):
    rows, d = 32, 64
    X = _calibration(d, 512, 20)
    W = torch.randn(rows, d, generator=_gen(21)) / math.sqrt(d)
    H = layer_hessian(X)
    n, m = nm if nm else (None, None)
    act_norm = X.norm(dim=1).float()
    W_sgpt, _ = sparsegpt_prune(W, H, 0.5, n, m, blocksize=16)
    e_sgpt = reconstruction_error(W, W_sgpt, X)
    e_wanda = reconstruction_error(W, W * wanda_mask(W, act_norm, 0.5, n, m), X)
    e_mag = reconstruction_error(W, W * (nm_mask(W, *nm) if nm else magnitude_mask(W, 0.5)), X)
    assert e_sgpt < e_wanda < e_mag
    assert e_sgpt < 0.7 * e_wanda  # the weight update buys a clear margin, not a rounding one


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sparsegpt_sparsity_zero_returns_weight_unchanged(dtype):
    W = torch.randn(8, 16, generator=_gen(22)).to(dtype)
    W_hat, mask = sparsegpt_prune(W, layer_hessian(_calibration(16, 64, 23)), 0.0, blocksize=4)
    assert W_hat.dtype == dtype and torch.equal(W_hat, W) and mask.all()


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8)])
def test_sparsegpt_nm_pattern(n, m):
    W = torch.randn(6, 32, generator=_gen(24))
    W_hat, mask = sparsegpt_prune(W, layer_hessian(_calibration(32, 128, 25)), 1 - n / m, n, m, blocksize=8)
    assert (mask.reshape(-1, m).sum(1) == n).all()
    assert (W_hat[~mask] == 0).all() and ((W_hat != 0).reshape(-1, m).sum(1) <= n).all()


def test_sparsegpt_dead_inputs_are_zeroed_as_in_the_reference():
    X = _calibration(16, 64, 26)
    X[[2, 9]] = 0.0
    W = torch.randn(4, 16, generator=_gen(27))
    W_hat, mask = sparsegpt_prune(W, layer_hessian(X), 0.25, blocksize=8)
    assert (W_hat[:, [2, 9]] == 0).all() and torch.isfinite(W_hat).all()
    assert int((~mask).sum()) == 16


# ---------------------------------------------------------------- bad input

W0 = torch.randn(4, 8)
H0 = torch.eye(8)


@pytest.mark.parametrize("call, error, match", [
    (lambda: magnitude_mask(W0, 1.0), ValueError, r"sparsity=1\.0 .*\[0\.0, 1\.0\)"),
    (lambda: magnitude_mask(W0, -0.1), ValueError, r"sparsity=-0\.1"),
    (lambda: wanda_mask(W0, torch.ones(8), float("nan")), ValueError, r"sparsity=nan"),
    (lambda: sparsegpt_prune(W0, H0, 1.5), ValueError, r"sparsity=1\.5"),
    (lambda: magnitude_mask(W0, "0.5"), TypeError, r"sparsity must be a real number"),
    (lambda: nm_mask(torch.randn(4, 10), 2, 4), ValueError, r"m=4 is not allowed; use a divisor of in_features=10"),
    (lambda: nm_mask(W0, 5, 4), ValueError, r"n=5, m=4 .*n <= m"),
    (lambda: nm_mask(W0, 0, 4), ValueError, r"n=0 is out of range; allowed: \[1, inf\)"),
    (lambda: nm_mask(W0, 2.0, 4), TypeError, r"n must be an int, got 2.0 \(float\)"),
    (lambda: wanda_mask(W0, torch.ones(8), 0.5, n=2), ValueError, r"n and m must be given together"),
    (lambda: wanda_mask(W0, torch.ones(8), 0.6, 2, 4), ValueError, r"sparsity=0\.6 disagrees with n=2, m=4"),
    (lambda: sparsegpt_prune(W0, torch.eye(9), 0.5), ValueError, r"hessian must have shape .*\(8, 8\).*\(9, 9\)"),
    (lambda: sparsegpt_prune(W0, torch.ones(8), 0.5), ValueError, r"hessian must have shape"),
    (lambda: sparsegpt_prune(W0, 2 * torch.ones(8, 8) - torch.eye(8), 0.5), ValueError,
     r"not positive definite after dampening with percdamp=0\.01"),
    (lambda: sparsegpt_prune(W0, layer_hessian(torch.randn(8, 3)), 0.5, percdamp=0.0), ValueError,
     r"not positive definite"),
    (lambda: sparsegpt_prune(W0, torch.randn(8, 8) + 10 * torch.eye(8), 0.5), ValueError, r"symmetric"),
    (lambda: sparsegpt_prune(W0, H0, 0.5, blocksize=0), ValueError, r"blocksize=0 is out of range; allowed: \[1, "),
    (lambda: sparsegpt_prune(W0, H0, 0.5, blocksize=True), TypeError, r"blocksize must be an int, got True"),
    (lambda: sparsegpt_prune(W0, H0, 0.5, 2, 4, blocksize=6), ValueError, r"blocksize=6 .*multiple of m=4"),
    (lambda: sparsegpt_prune(W0, H0, 0.5, percdamp=-1.0), ValueError, r"percdamp=-1\.0"),
    (lambda: sparsegpt_prune(W0, H0, 0.5, mask=torch.ones(4, 8)), TypeError, r"mask must be a torch\.bool"),
    (lambda: sparsegpt_prune(W0, H0, 0.5, mask=torch.ones(4, 9, dtype=torch.bool)), ValueError,
     r"mask must have the weight's shape \(4, 8\)"),
    (lambda: wanda_mask(W0, torch.ones(9), 0.5), ValueError, r"act_norm must have shape \(in_features,\) = \(8,\)"),
    (lambda: wanda_mask(W0, torch.ones(4, 8), 0.5), ValueError, r"act_norm must have shape"),
    (lambda: wanda_mask(W0, -torch.ones(8), 0.5), ValueError, r"act_norm must be non-negative"),
    (lambda: wanda_mask(W0, torch.full((8,), float("nan")), 0.5), ValueError, r"act_norm contains NaN or infinite"),
    (lambda: wanda_mask(W0, torch.ones(8, dtype=torch.int64), 0.5), TypeError, r"act_norm must be a floating"),
    (lambda: magnitude_mask(torch.ones(4, 8, dtype=torch.int32), 0.5), TypeError,
     r"weight must be a floating-point tensor, got torch\.int32"),
    (lambda: sparsegpt_prune(torch.ones(4, 8, dtype=torch.int64), H0, 0.5), TypeError, r"weight must be a float"),
    (lambda: nm_mask([[1.0, 2.0]], 1, 2), TypeError, r"weight must be a torch\.Tensor, got list"),
    (lambda: magnitude_mask(torch.randn(8), 0.5), ValueError, r"weight must have 2 dimensions, got shape \(8,\)"),
    (lambda: obs_prune_row_bruteforce(torch.randn(8), torch.eye(7), 2), ValueError, r"H must have shape \(8, 8\)"),
])
def test_bad_input_raises_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()
