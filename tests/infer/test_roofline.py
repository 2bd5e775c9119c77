"""lab.infer.roofline.matmul_cost and attainable_flops: the roofline of one matmul; prefill_crossover_tokens.

References: the closed forms (FLOPs 2·M·N·K; bytes of W, X and Y), the limits of the intensity
(≈ M for a bf16 weight when M ≪ N, K; → the compute-bound N·K/(N + K) as M grows), and the ridge
point peak / bandwidth where the two roofs meet; the default ceilings are `lab.core.ceilings`'s. The prefill
crossover against a scan of every prompt length and, for a bf16 model, the ridge point σ·peak / (2·bandwidth).
"""

from __future__ import annotations

import math

import pytest
import torch

from lab.core.ceilings import device_ceilings
from lab.infer.roofline import (attainable_flops, decode_step_cost, matmul_cost, matmul_params,
                                prefill_crossover_tokens, speed_of_light_ms, weight_bytes)
from lab.infer.suite import LLAMA2_7B_SHAPE
from lab.models import GPT


def test_matmul_cost_closed_form():
    M, N, K = 4, 96, 64
    cost = matmul_cost(M, N, K)
    assert cost["flops"] == 2 * M * N * K
    assert cost["bytes"] == 2 * N * K + 2 * M * (N + K)
    assert cost["intensity"] == cost["flops"] / cost["bytes"]
    int4 = matmul_cost(M, N, K, bits_per_weight=4 + 32 / 32)           # int4, 16-bit scale + zero per 32
    assert int4["bytes"] == N * K / 2 + 4 * N * K / 32 + 2 * M * (N + K)
    assert matmul_cost(M, N, K, act_bytes=4)["bytes"] == 2 * N * K + 4 * M * (N + K)


def test_intensity_limits():
    N = K = 8192
    assert matmul_cost(1, N, K)["intensity"] == pytest.approx(1.0, rel=1e-3)   # decode: ≈ M FLOP/byte
    assert matmul_cost(16, N, K)["intensity"] == pytest.approx(16.0, rel=1e-2)
    assert matmul_cost(1, N, K, 4.25)["intensity"] > 3.5 * matmul_cost(1, N, K)["intensity"]
    huge = matmul_cost(10**7, N, K)["intensity"]
    assert huge == pytest.approx(N * K / (N + K), rel=1e-3)                  # bound by the activations


def test_attainable_flops_is_the_roofline():
    ceilings = device_ceilings()                       # the defaults: an H100 SXM5, measured or datasheet
    BANDWIDTH, PEAK_FLOPS = ceilings.bandwidth, ceilings.peak_flops
    ridge = ceilings.ridge
    assert attainable_flops(1.0) == BANDWIDTH
    assert attainable_flops(ridge / 2) == pytest.approx(PEAK_FLOPS / 2)
    assert attainable_flops(ridge * 10) == PEAK_FLOPS
    assert attainable_flops(2.0, bandwidth=1e9, peak_flops=1e12) == 2e9
    intensity = torch.logspace(-1, 4, 50, dtype=torch.float64)
    roof = attainable_flops(intensity)
    assert isinstance(roof, torch.Tensor) and roof.shape == intensity.shape
    expected = [min(float(i) * BANDWIDTH, PEAK_FLOPS) for i in intensity]
    assert all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(roof.tolist(), expected))


@pytest.mark.parametrize("kwargs, error, match", [(dict(M=0, N=8, K=8), ValueError, "M=0"),
                                                  (dict(M=1, N=8.0, K=8), TypeError, "N must be an int"),
                                                  (dict(M=1, N=8, K=True), TypeError, "K must be an int")])
def test_bad_shapes_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        matmul_cost(**kwargs)


def test_default_ceilings_come_from_the_one_source():
    ceilings = device_ceilings()
    cost = {"bytes": 3e9, "flops": 1e12}
    assert speed_of_light_ms(cost) == speed_of_light_ms(cost, ceilings.bandwidth, ceilings.peak_flops)
    assert speed_of_light_ms(cost, 3e12, 8e14) == {"memory_ms": 1.0, "compute_ms": 1.25, "ms": 1.25}
    assert attainable_flops(1e6) == ceilings.peak_flops
    assert attainable_flops(1e6, bandwidth=1e9) == ceilings.peak_flops        # only the missing one is filled
    assert attainable_flops(1.0, peak_flops=1e20) == ceilings.bandwidth


def test_bad_ceilings_and_widths():
    with pytest.raises(ValueError, match="bits_per_weight"):
        matmul_cost(1, 8, 8, bits_per_weight=0)
    with pytest.raises(ValueError, match="bandwidth"):
        attainable_flops(1.0, bandwidth=0)
    with pytest.raises(ValueError, match="peak_flops"):
        speed_of_light_ms({"bytes": 1.0, "flops": 1.0}, 1e12, -1.0)


def test_prefill_crossover_is_the_first_compute_bound_prompt_length():
    with torch.device("meta"):
        model = GPT(LLAMA2_7B_SHAPE).to(torch.bfloat16)
    bw, peak = 3.35e12, 989e12                                         # H100 SXM5 datasheet

    def compute_bound(S: int, B: int = 1) -> bool:
        cost = decode_step_cost(model, B, S, kv_cache=False)
        return cost["flops"] / peak >= cost["bytes"] / bw

    S = prefill_crossover_tokens(model, bw, peak)
    assert compute_bound(S) and not compute_bound(S - 1)
    ridge = weight_bytes(model) * peak / (2 * matmul_params(model) * bw)  # linears only: ≈ peak / bandwidth in bf16
    assert ridge - 5 < S <= ridge + 1 and 280 < S < 300
    S4 = prefill_crossover_tokens(model, bw, peak, batch=4)
    assert compute_bound(S4, 4) and not compute_bound(S4 - 1, 4)
    with pytest.raises(ValueError, match="still memory bound"):
        prefill_crossover_tokens(model, bw * 1e-6, peak)
