"""lab.quant.observers against `torch.ao.quantization.MinMaxObserver` (scale and zero point),
`numpy.percentile` and brute-force searches of the clipping range."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.ao.quantization import MinMaxObserver as TorchMinMaxObserver

from lab.quant import ChannelAbsMaxObserver, MinMaxObserver, MSEObserver, PercentileObserver
from tests.quant.test_affine import BITS, X0, _gen, _grid, _ref_qparams

# ---------------------------------------------------------------------------------------------
# observers
# ---------------------------------------------------------------------------------------------

def _batches(seed: int) -> list[torch.Tensor]:
    g = _gen(seed)
    return [torch.randn(4, 50, generator=g) * (i + 1) + 0.3 * i for i in range(3)]


@pytest.mark.parametrize("bits", BITS)
def test_min_max_observer_matches_torch_observer(bits):
    ours, ours_sym = MinMaxObserver(), MinMaxObserver()
    theirs = TorchMinMaxObserver(dtype=torch.quint8, quant_min=0, quant_max=2 ** bits - 1)
    theirs_sym = TorchMinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric,
                                     quant_min=-(2 ** (bits - 1)) + 1, quant_max=2 ** (bits - 1) - 1)
    batches = _batches(bits)
    for x in batches:
        for observe in (ours.update, ours_sym.update, theirs, theirs_sym):
            observe(x)
    everything = torch.cat([b.flatten() for b in batches])
    assert ours.range() == (everything.min(), everything.max())
    s, z = ours.qparams(bits)
    ts, tz = theirs.calculate_qparams()
    assert s.item() == ts.item() and z.item() == tz.item()
    s, z = ours_sym.qparams(bits, symmetric=True)
    ts, tz = theirs_sym.calculate_qparams()
    assert s.item() == ts.item() and z.item() == tz.item() == 0


@pytest.mark.parametrize("percentile", [99.0, 99.9, 100.0])
def test_percentile_observer_matches_numpy(percentile):
    observer = PercentileObserver(percentile)
    batches = _batches(20)
    for x in batches:
        observer.update(x)
    everything = torch.cat([b.flatten() for b in batches]).numpy().astype(np.float64)
    lo, hi = observer.range()
    ref_lo, ref_hi = np.percentile(everything, [100 - percentile, percentile])
    assert lo.item() == pytest.approx(ref_lo, rel=1e-5) and hi.item() == pytest.approx(ref_hi, rel=1e-5)
    if percentile == 100.0:
        assert (lo, hi) == observer.range() and hi.item() == everything.max()


def test_percentile_observer_subsamples_each_batch():
    observer = PercentileObserver(99.0, max_samples=30, seed=1)
    batches = _batches(21)
    for x in batches:
        observer.update(x)
    assert observer._values().numel() == 3 * 30
    lo, hi = observer.range()
    everything = torch.cat([b.flatten() for b in batches])
    assert everything.min() <= lo < hi <= everything.max()


def _fq_error(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool) -> float:
    s, z = _ref_qparams(lo, hi, bits, symmetric)
    qmin, qmax = _grid(bits, symmetric)
    return (torch.fake_quantize_per_tensor_affine(values, s, z, qmin, qmax) - values).square().sum().item()


@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_mse_observer_is_the_brute_force_best_clipping_and_beats_min_max(bits, symmetric):
    g = _gen(30 + bits)
    x = torch.randn(4000, generator=g)
    x[:5] *= 12                                                     # a few outliers stretch the min-max range
    observer, minmax = MSEObserver(n_grid=40, min_ratio=0.1), MinMaxObserver()
    observer.update(x)
    minmax.update(x)
    lo, hi = observer.range(bits, symmetric)
    brute = min((_fq_error(x, c * x.min(), c * x.max(), bits, symmetric), c.item())
                for c in torch.linspace(1.0, 0.1, 40))
    err_mse = _fq_error(x, lo, hi, bits, symmetric)
    err_minmax = _fq_error(x, *minmax.range(), bits, symmetric)
    assert err_mse == pytest.approx(brute[0], rel=1e-6)
    torch.testing.assert_close(torch.stack([lo, hi]), brute[1] * torch.stack([x.min(), x.max()]))
    assert err_mse <= err_minmax
    if bits <= 4:
        assert err_mse < 0.8 * err_minmax                          # clipping the outliers pays at low bit width
    s, z = observer.qparams(bits, symmetric)
    ref_s, ref_z = _ref_qparams(lo, hi, bits, symmetric)
    assert torch.equal(s, ref_s) and torch.equal(z, ref_z)


def test_channel_abs_max_observer():
    observer = ChannelAbsMaxObserver()
    xs = [torch.randn(2, 5, 7, generator=_gen(40 + i)) * (i + 1) for i in range(3)]
    for x in xs:
        observer.update(x)
    ref = torch.cat([x.reshape(-1, 7) for x in xs]).abs().amax(0)
    assert observer.abs_max.shape == (7,) and torch.equal(observer.abs_max, ref)


def test_observer_qparams_rejects_bad_bits():
    observer = MinMaxObserver()
    observer.update(X0)
    with pytest.raises(ValueError, match=r"bits=12"):
        observer.qparams(12)
